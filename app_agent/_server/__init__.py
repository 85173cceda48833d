"""The agent's server side: the gate that admits connections, who they are and what they may do,
refusals, threads and the process."""
