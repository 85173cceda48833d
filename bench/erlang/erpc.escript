#!/usr/bin/env escript
%% Round trips of erpc:call to a live node over a kept distribution connection: the median
%% of N calls, each timed on its own, in microseconds.
main([Target, Cookie, NText]) ->
    N = list_to_integer(NText),
    Name = list_to_atom("rpcctl_bench_erpc_" ++ os:getpid()),
    {ok, _} = net_kernel:start([Name, shortnames]),
    erlang:set_cookie(node(), list_to_atom(Cookie)),
    Node = list_to_atom(Target),
    pong = net_adm:ping(Node),
    [erpc:call(Node, erlang, node, []) || _ <- lists:seq(1, 200)],
    Times = lists:sort([element(1, timer:tc(erpc, call, [Node, erlang, node, []]))
                        || _ <- lists:seq(1, N)]),
    io:format("~p~n", [lists:nth(N div 2 + 1, Times)]).
