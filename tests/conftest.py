import contextlib
import io

import pytest
import torch

# Tests use tiny tensors: one thread avoids OpenMP start-up and spin costs that dominate small
# ops (and make a shared 2-core machine crawl when several test processes run at once).
torch.set_num_threads(1)


@pytest.fixture(scope="package")
def finished_run(tmp_path_factory):
    """A whole tiny train_toy.py run (tiny_run.TINY): its folder, read only by the tests, and its report."""
    from tiny_run import TINY

    import train_toy
    out = tmp_path_factory.mktemp("run") / "toy"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = train_toy.main(TINY + ["--out", str(out)])
    (out / "stdout.txt").write_text(printed.getvalue())
    return out, report
