"""Import boundaries: the prefill worker never imports the router, the router detokenises without torch.

Each check runs in a fresh interpreter, so that modules imported by other tests cannot hide an
import (or fake one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tandem.difficulty.probe import ProbeHead


def _imported(code: str, env: dict[str, str] | None = None) -> dict:
    """Runs `code` in a fresh interpreter; it ends by printing one JSON object."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


ROUTER_MODULES = ("json.dumps(sorted(m for m in sys.modules "
                  "if m == 'router' or m.startswith('router.')))")


def test_the_prefill_worker_and_its_probe_import_no_router_module(tmp_path):
    rng = np.random.default_rng(0)
    ProbeHead.fit(rng.normal(size=(60, 8)), rng.integers(-1, 2, size=60)).save(tmp_path)
    code = ("import sys, json\n"
            "import prefill_worker.main, prefill_worker.service\n"
            "from tandem.serving.worker_probe import load_probe\n"
            f"probe = load_probe({str(tmp_path)!r}, hidden_size=8)\n"
            "assert probe.hidden_size == 8\n"
            f"print({ROUTER_MODULES})\n")
    assert _imported(code) == []


def test_the_router_loads_a_tokenizer_and_detokenises_without_torch(tmp_path):
    from tandem.engine.tiny_model import make_tiny_model

    # The router's `--model tiny` reads the cached folder: it is generated (with torch) only once.
    make_tiny_model(tmp_path / "tiny-llama", num_hidden_layers=1)
    code = ("import sys, json\n"
            "import router.main\n"
            "from router.sample_text import SampleText\n"
            "from tandem.engine.tokenizer import Tokenizer\n"
            "from tandem.serving.worker_args import resolve_model_dir\n"
            "tokenizer = Tokenizer.from_model_dir(resolve_model_dir('tiny'))\n"
            "ids = tokenizer.encode('hello world, hello router')\n"
            "sample = SampleText(tokenizer, ids[:2], stop=[])\n"
            "pieces = sample.add(ids[2:], [], [])\n"
            "tail = sample.finish()\n"
            "text = ''.join(p.text for p in pieces) + (tail.text if tail else '')\n"
            "assert text == tokenizer.decode(ids[2:]), text\n"
            "print(json.dumps(sorted(m for m in ('torch', 'sklearn', 'transformers') "
            "if m in sys.modules)))\n")
    assert _imported(code, env={"TANDEM_CACHE": str(tmp_path)}) == []
