import sys

from bench.cluster import __doc__ as DOC
from bench.cluster.commands import main

sys.exit(main(description=DOC))
