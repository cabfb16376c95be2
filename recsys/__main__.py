"""``python -m recsys <command>``: the CLI as a module, for ``ray job submit --working-dir . --
python -m recsys train``, where the submitted working directory (not an installed console
script) must provide the code the job runs."""

from recsys.cli import app

app(prog_name="recsys")
