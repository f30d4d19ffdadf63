"""The store: complete keys, corrupt entries, hooks, locks, NRN_NO_CACHE, atomic files, provenance."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nrnlib import store


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NRN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NRN_NO_CACHE", raising=False)
    store.reset_ledger()
    return tmp_path / "cache"


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


# ---- files --------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    store.atomic_write(path, lambda tmp: open(tmp, "w").write("old"))

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        store.atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_save_safetensors_atomic_round_trip(tmp_path):
    from safetensors import safe_open

    t = torch.arange(6.0).reshape(2, 3)
    path = store.save_safetensors_atomic(tmp_path / "t.safetensors", {"t": t}, {"key": "v"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"key": "v"} and torch.equal(f.get_tensor("t"), t)


# ---- keys ---------------------------------------------------------------------------------------


def test_hit_then_miss_on_any_key_change(cache):
    compute, calls = _counting({"x": 1.5})
    kw = dict(settings={"n": 3}, code=["store"], fingerprint="fp", tasks={"t": "d1"})
    assert store.cached("demo", compute, **kw) == {"x": 1.5}
    assert store.cached("demo", compute, **kw) == {"x": 1.5} and len(calls) == 1
    for change in ({"settings": {"n": 4}}, {"fingerprint": "fp2"}, {"tasks": {"t": "d2"}}, {"code": ["models"]}):
        store.cached("demo", compute, **(kw | change))
    assert len(calls) == 5
    assert store.ledger_summary()["computed_now"] == 5 and store.ledger_summary()["entries"] == 6


def test_source_digest_ignores_docstrings_not_code():
    a = 'def f(x):\n    """Doc."""\n    return x + 1\n'
    b = 'def f(x):\n    """Other words."""\n    # a comment\n    return x + 1\n'
    c = 'def f(x):\n    """Doc."""\n    return x + 2\n'
    assert store.source_digest(a) == store.source_digest(b) != store.source_digest(c)
    assert store.code_digest(["store"]) != store.code_digest(["store", "models"])
    with pytest.raises(store.StoreError, match="no nrnlib module"):
        store.code_digest(["no_such_module"])


def test_keys_must_be_plain_json(cache):
    with pytest.raises(store.StoreError, match="plain JSON"):
        store.cached("demo", lambda: 1, settings={"lr": float("nan")}, code=["store"])


@pytest.mark.parametrize("fmt", ["json", "tensors"])
def test_a_corrupt_entry_is_recomputed_and_rewritten(cache, fmt):
    value = {"t": torch.ones(2)} if fmt == "tensors" else {"v": 1}
    compute, calls = _counting(value)
    kw = dict(settings={}, code=["store"], fmt=fmt)
    store.cached("demo", compute, **kw)
    [entry] = [p for p in (cache / "demo").iterdir() if p.is_file()]
    entry.write_bytes(b"\x00garbage{")
    again = store.cached("demo", compute, **kw)
    assert len(calls) == 2
    assert torch.equal(again["t"], value["t"]) if fmt == "tensors" else again == value
    store.cached("demo", compute, **kw)
    assert len(calls) == 2  # rewritten: a hit again


def test_no_cache_env_computes_every_time_and_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("NRN_NO_CACHE", "1")
    compute, calls = _counting(1)
    for _ in range(2):
        store.cached("demo", compute, settings={}, code=["store"])
    assert len(calls) == 2 and not (cache / "demo").exists()


def test_entries_carry_provenance(cache):
    store.cached("demo", lambda: 1, settings={}, code=["store"])
    [entry] = [p for p in (cache / "demo").iterdir() if p.is_file()]
    prov = json.loads(entry.read_text())["provenance"]
    assert {"commit", "versions", "device", "compute_s", "written"} <= set(prov)


def test_save_results_aggregates_the_ledger(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("NRN_FIGURES", str(tmp_path / "figs"))
    store.cached("demo", lambda: 1, settings={"a": 1}, code=["store"])
    store.cached("demo", lambda: 1, settings={"a": 1}, code=["store"])
    rel = store.save_results("demo_smoke", {"x": float("nan"), "y": [1, 2]}, profile="smoke", seeds=[0])
    payload = store.load_results("demo_smoke")
    assert rel == "results/demo_smoke.json" and payload["schema"] == store.RESULTS_SCHEMA
    assert payload["provenance"]["entries"]["entries"] == 2 and payload["provenance"]["entries"]["computed_now"] == 1
    assert payload["results"] == {"x": None, "y": [1, 2]}


# ---- hooks --------------------------------------------------------------------------------------


def test_a_result_under_hooks_is_never_cached_as_the_intact_models(tiny_model, parity_task, cache):
    """The reported bug: attribute() inside deactivate() was cached and later served for the intact model."""
    from nrnlib import attribute, deactivate
    from nrnlib.experiments import score_condition
    from nrnlib.neurons import NeuronSet

    neurons = NeuronSet.from_indices(tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp, {0: range(20), 1: range(30)})
    with deactivate(tiny_model, neurons):
        with pytest.raises(store.HookedModelError, match="cache=False"):
            attribute(tiny_model, parity_task, n_examples=4, progress=False)
        with pytest.raises(store.HookedModelError):
            score_condition(tiny_model, parity_task, None, n=4)
        under = attribute(tiny_model, parity_task, n_examples=4, progress=False, cache=False)
    intact = attribute(tiny_model, parity_task, n_examples=4, progress=False)
    fresh = attribute(tiny_model, parity_task, n_examples=4, progress=False, cache=False)
    assert torch.equal(intact, fresh) and not torch.equal(intact, under)


def test_run_with_cache_leaves_no_hook_that_blocks_the_cache(tiny_model, parity_task, cache):
    """run_with_cache makes transformers install its own output-capturing hooks, which stay; they are
    the library's, not an edit of the model, so cached calls still work afterwards (and a user's hook
    is still caught)."""
    from nrnlib import attribute
    from nrnlib.model_state import attached_hooks

    tiny_model.run_with_cache(torch.tensor([[1, 2, 3, 4]]))
    assert attached_hooks(tiny_model) == []
    attribute(tiny_model, parity_task, n_examples=4, progress=False)
    handle = tiny_model.blocks[0].mlp.register_forward_hook(lambda m, i, o: None)
    try:
        assert attached_hooks(tiny_model) != []
    finally:
        handle.remove()


# ---- concurrency --------------------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import sys, time
    from nrnlib import store

    def compute():
        with open(sys.argv[1], "a") as f:
            f.write("computed\\n")
        time.sleep(1.5)
        return {"answer": 42}

    print(store.cached("race", compute, settings={"k": 1}, code=["store"])["answer"])
""")


def test_two_processes_on_one_key_both_succeed_and_compute_once(cache, tmp_path):
    counter = tmp_path / "count.txt"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(counter)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["42", "42"]
    assert counter.read_text().count("computed") == 1


_LOADER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nrnlib import models

    def fake_dequantize(gguf, out):
        with open(sys.argv[1], "a") as f:
            f.write("dequantized\\n")
        time.sleep(1.0)
        for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
            (Path(out) / name).write_text("{}")

    models._dequantize = fake_dequantize
    models.gguf_path = lambda: Path(sys.argv[2])
    print(models._smollm2_dir().name)
""")


def test_first_model_load_from_two_processes(cache, tmp_path):
    """Two processes loading the embedded model for the first time: both succeed, one dequantizes,
    and no temporary folder is left (the dequantization itself is faked: 1 s instead of 45 s)."""
    counter, gguf = tmp_path / "count.txt", tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" * 100)
    script = tmp_path / "loader.py"
    script.write_text(_LOADER)
    procs = [subprocess.Popen([sys.executable, str(script), str(counter), str(gguf)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    assert counter.read_text().count("dequantized") == 1
    leftovers = [p.name for p in (cache / "models").iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_generated_outputs_do_not_make_the_commit_dirty(tmp_path, monkeypatch):
    """A notebook run rewrites figures, executed notebooks and REPRODUCTION.md: the code that computed
    the results is still the commit's; an edited source file is not."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("figures/a.png", "notebooks/n.ipynb", "notebooks/n.py", "REPRODUCTION.md", "lib.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(store, "REPO_ROOT", tmp_path)
    for name in ("figures/a.png", "notebooks/n.ipynb", "REPRODUCTION.md"):
        (tmp_path / name).write_text("v2")
    assert not store.git_commit().endswith("+dirty")
    (tmp_path / "notebooks/n.py").write_text("v2")
    assert store.git_commit().endswith("+dirty")


def test_lookup_reads_without_computing_and_entry_path_names_the_file(cache):
    where = dict(settings={"a": 1}, code=("store",), fingerprint="fp", tasks={"t": "d"})
    assert store.lookup("probe", **where) is None
    assert store.cached("probe", lambda: {"v": 2}, **where) == {"v": 2}
    assert store.lookup("probe", **where) == {"v": 2}
    assert store.lookup("probe", **{**where, "settings": {"a": 2}}) is None
    path = store.entry_path("probe", **where)
    assert path.exists()
    path.write_text("garbage")
    assert store.lookup("probe", **where) is None  # unreadable: a miss, as for cached


def test_fingerprint_does_not_depend_on_the_thread_count_but_on_every_weight(tiny_model):
    """The weight statistics of the key are the same with 1, 2 and 4 threads, on a tensor whose float32
    sum does change with the thread count (the reduction order: it once split one cache in two); one
    entry nudged by one ulp changes the model's key."""
    from nrnlib.model_state import _weight_digest, model_fingerprint

    big = torch.randn(1536, 576, generator=torch.Generator().manual_seed(0)) * 0.02  # a SmolLM2 MLP matrix
    threads = torch.get_num_threads()
    try:
        float_sums, digests = set(), set()  # float_sums: 2 distinct values on the 2-core machine
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            float_sums.add(big.sum(dtype=torch.float32).item())
            digests.add(_weight_digest(big))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1  # while the float32 sums differ on our CI-class CPU (not asserted: machine-specific)
    key = model_fingerprint(tiny_model)
    weight = next(iter(tiny_model.parameters()))
    with torch.no_grad():
        old = weight[0, 0].clone()
        weight[0, 0] = torch.nextafter(old, old + 1)
        try:
            assert model_fingerprint(tiny_model) != key
        finally:
            weight[0, 0] = old
    assert model_fingerprint(tiny_model) == key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_weight_digest_is_the_integer_sum_of_the_words(dtype):
    """``_weight_digest`` against Python integers unpacked from the raw bytes (struct, little-endian
    signed words of the element's width; 8-byte elements as two 32-bit words), on a non-contiguous
    view: the value the cache keys are built from, whatever the backend that sums it."""
    import struct

    from nrnlib.model_state import _weight_digest

    t = (torch.randn(7, 9, generator=torch.Generator().manual_seed(1)) * 3).to(dtype).T  # transposed: strided
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    fmt = {4: "i", 2: "h", 8: "i"}[t.element_size()]
    width = struct.calcsize(fmt)
    expected = sum(struct.unpack(f"<{len(raw) // width}{fmt}", raw))
    assert _weight_digest(t) == expected
