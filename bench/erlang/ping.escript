#!/usr/bin/env escript
%% net_adm:ping of a live node, as a whole process: what an Erlang release's `bin/app ping`
%% does. Distribution starts with a unique name so that runs never collide in epmd.
main([Target, Cookie]) ->
    Name = list_to_atom("rpcctl_bench_ping_" ++ os:getpid()),
    {ok, _} = net_kernel:start([Name, shortnames]),
    erlang:set_cookie(node(), list_to_atom(Cookie)),
    case net_adm:ping(list_to_atom(Target)) of
        pong -> io:format("pong~n");
        pang -> halt(3)
    end.
