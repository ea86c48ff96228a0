from bench import cli
from bench.cluster import __doc__ as DOC
from bench.cluster.commands import main

cli.run(lambda argv: main(argv, description=DOC))
