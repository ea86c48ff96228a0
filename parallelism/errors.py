"""The suite's one error convention (no MPI here: tools that never launch ranks import it too).

| what                                            | raised as       | exit |
|-------------------------------------------------|-----------------|------|
| bad input (arguments, files, shapes, profiles)  | `UsageError`    | 2, one line `error: ...` |
| an operation that failed (a rank crashed, I/O)  | anything else   | 1, one line naming the rank |
| Ctrl-C                                          | KeyboardInterrupt | 130 |
| the reader of stdout went away (`... | head`)   | BrokenPipeError | 141 |

`bench.cli.run` maps them; under MPI it also makes sure an error on any rank ends the
whole job within seconds.
"""


class UsageError(Exception):
    """Bad input: one line `error: <message>` on stderr, exit code 2."""


class CommError(TypeError):
    """A tensor the communicator cannot move (dtype, layout): a bug in the caller."""
