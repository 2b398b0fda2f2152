"""Local processes that this library starts and stops: the API server, a tracking server, Spark's daemons, a
notebook execution, the researcher's browser tools.

:mod:`.background` starts one with its output in a log (on a free port), waits until it answers, stops it (its
whole process group when it leads one) and puts its log's tail in every error; :mod:`.lifeline` makes a child end
with the process that launched it; :mod:`.groups` signals, watches and kills process groups and trees by pid
(a cluster stopped by a later command knows only its pids); :mod:`.foreground` becomes a command.
"""
