"""Render the README's results section from benchmarks/results/*.json (between the results markers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def pm(stat: dict) -> str:
    """'mean ± std' in percent."""
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(r)} |" for r in rows)]


def accuracy_rows(entries: dict, keys: tuple[str, ...]) -> list[list[str]]:
    """One row per entry: its name, then 'mean ± std' of each accuracy key."""
    return [[name, *(pm(e[k]) for k in keys)] for name, e in entries.items()]


def load(name: str) -> dict | None:
    """A results file, or None when it has not been produced yet."""
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def methods_section(data: dict) -> list[str]:
    """One table per student setting: every method, last/best/at-best-val test accuracy."""
    lines = ["### Fashion-MNIST: objectives compared (`benchmarks/fmnist_methods.py`)", ""]
    seeds = len(data.get("seeds", []))
    lines.append(
        f"Teacher: `cnn` (390k params, 2 epochs, trained on the full training split). {seeds} seeds per row; test "
        "accuracy in % (mean ± std) at the last epoch, at the best epoch (the literature's convention) and at the "
        "epoch that was best on the validation split. KD's (T, α) was chosen on the validation split (seed 0)."
    )
    for key, entry in data["students"].items():
        setting = entry.get("setting", {})
        chosen = entry["selection"]["chosen"]
        student = setting.get("student", {})
        limit = setting.get("data", {}).get("train_limit")
        images = f"{limit} training images" if limit else "all 54,000 training images"
        lines += [
            "",
            f"**{key}** — student `{student.get('name')}` {student.get('params', {})}, {images}, "
            f"{entry['epochs']} epochs; KD chosen T={chosen['T']}, α={chosen['alpha']}. "
            f"KD − scratch (last epoch): {100 * entry['kd_gain_last']:+.2f} points; beyond the seed spread: "
            f"{'yes' if entry['kd_beats_scratch_beyond_spread'] else 'no'}.",
            "",
        ]
        keys = ("test_last", "test_best", "test_at_best_val")
        lines += table(["method", "last epoch", "best epoch", "at best val"], accuracy_rows(entry["methods"], keys))
    return lines


def label_scarce_section(data: dict) -> list[str]:
    """CE on 1% labels vs KD on all images without labels."""
    rows = accuracy_rows(data["settings"], ("test_last", "test_best"))
    return [
        "",
        "### Label-scarce (`benchmarks/label_scarce.py`)",
        "",
        *table(["setting", "last epoch", "best epoch"], rows),
    ]


def overhead_section(data: dict) -> list[str]:
    """Median step times and the ratios, one line per student."""
    lines = ["", "### Step-time overhead (`benchmarks/overhead.py`)", ""]
    for key, d in data["students"].items():
        m = d["median_ms"]
        lines.append(
            f"- **{key}** ({d['student']}; batch {d['batch']}, {d['steps']} interleaved steps, "
            f"teacher {d['teacher']}): "
            f"CE step {m['ce_step']:.2f} ms, teacher forward {m['teacher_forward']:.2f} ms, online-KD step "
            f"{m['kd_step']:.2f} ms → KD / (CE + teacher) = **{d['kd_over_ce_plus_teacher']:.3f}** (limit 1.15). "
            f"KD from a store on disk: {m['store_step']:.2f} ms = **{d['cached_step_ratio']:.3f}×** the CE step "
            f"(`cached_step_ratio`; `live_step_ratio` {d['live_step_ratio']:.2f}×); from in-memory precomputed "
            f"logits {d['precomputed_step_ratio']:.3f}×. Plain PyTorch, no kdforge, same KD step / CE step: "
            f"{d.get('plain_pytorch_kd_over_ce', float('nan')):.3f}× (the floor set by the KD term itself)."
        )
    rec = data.get("recording")
    if rec:
        m = rec["median_ms"]
        lines.append(
            f"- **Recording** (`--recording`; {rec['student']} ← {rec['teacher']}, batch {rec['batch']}, "
            f"{rec['steps']} interleaved steps): a KD step with {rec['recorded_layers_per_side']} layers recorded on "
            f"each side (loss arithmetic excluded) {m['recorded']:.2f} ms vs {m['plain']:.2f} ms without → "
            f"**{rec['recorded_over_plain']:.3f}×** (limit {rec['limit']:.2f})."
        )
    return lines


def store_section(data: dict) -> list[str]:
    """Build throughput against bare teacher inference."""
    return [
        "",
        "### Store build throughput (`benchmarks/store_throughput.py`)",
        "",
        f"{data['samples']} Fashion-MNIST images, batch {data['batch']}, teacher {data['teacher']}, codec "
        f"`{data['codec']}`: bare inference {data['bare_samples_per_s']:.0f} samples/s, store build "
        f"{data['build_samples_per_s']:.0f} samples/s → **{100 * data['build_over_bare_throughput']:.1f}%** of the "
        "bare throughput (target ≥ 90%).",
    ]


def sparse_section(data: dict) -> list[str]:
    """The LLM codec table."""
    lines = [
        "",
        "### Sparse codecs for LLM signals (`benchmarks/sparse_codecs.py`)",
        "",
        f"Teacher {data['teacher']}, {data['tokens']} tokens of {data['corpus']}, vocabulary {data['vocab_size']:,}. "
        "KL(full ‖ reconstructed) per token, the tail mass spread uniformly over the other ids "
        f"({data['reference']}).",
        "",
    ]
    rows = [
        [
            str(r["k"]),
            f"`{r['codec']}`",
            f"{r['bytes_per_token']:.0f}",
            f"{r['kl_full_vs_reconstructed']:.4f}",
            f"{r['top1_agreement']:.4f}",
        ]
        for r in data["table"]
    ]
    lines += table(["k", "codec", "bytes/token", "KL(full‖reconstructed)", "top-1 agreement"], rows)
    st = data["store"]
    lines += [
        "",
        f"Built through the store writer as per-token records (`{st['codec']}`, k={st['k']}): "
        f"{st['bytes_per_token_on_disk']:.1f} bytes/token on disk, shards and manifest included.",
    ]
    return lines


def shard_format_section(data: dict) -> list[str]:
    """Why the store's shards are safetensors."""
    lines = [
        "",
        "### Shard format (`benchmarks/shard_format.py`)",
        "",
    ]
    rows = [
        [workload, fmt, f"{1000 * v['write_s']:.1f}", f"{1000 * v['read_all_s']:.1f}", f"{v['bytes']:,}"]
        for workload, formats in data.items()
        if isinstance(formats, dict) and workload != "machine"
        for fmt, v in formats.items()
    ]
    lines += table(["workload", "format", "write (ms)", "read all (ms)", "bytes"], rows)
    lines += [
        "",
        "safetensors reads fastest, writes as fast as Arrow IPC, is smallest, needs no extra dependency and "
        "is what checkpoints use; Parquet is 10–100× slower to read and write here. The store uses safetensors.",
    ]
    return lines


def text_section(data: dict) -> list[str]:
    """One MiniLM store, two students."""
    st = data["store"]
    lines = [
        "",
        "### Text: one teacher store, two students (`benchmarks/text_store.py`)",
        "",
        f"{data['dataset']}; teacher {data['teacher']}: test accuracy {100 * data['teacher_test']['accuracy']:.2f}%. "
        f"Store (fp16) built once in {st['seconds']:.0f} s.",
        "",
    ]
    rows = [
        [
            key,
            f"{100 * v['test']['accuracy']:.2f}%",
            f"{100 * v['test']['agreement']:.2f}%",
            f"{v['train_wall_s']:.1f}",
            f"{v['live_step_ms']:.0f}",
            f"{v['store_step_ms']:.1f}",
            f"{v['wall_saved_s']:.0f}",
        ]
        for key, v in data["students"].items()
    ]
    header = ["student", "test acc", "agreement", "train wall (s)", "live step (ms)", "store step (ms)", "saved (s)"]
    lines += table(header, rows)
    lines += [
        "",
        f"Time saved = optimizer steps × (live step − store step), from per-step times measured on the same batches: "
        f"{data['wall_saved_s_both_students']:.0f} s for both students against {st['seconds']:.0f} s of store build.",
    ]
    return lines


def demo_section(data: dict) -> list[str]:
    """How long `make demo`'s run takes and what it prints."""
    rows = {r["name"]: r for r in data["rows"]}
    return [
        "",
        "### The default run (`benchmarks/demo_time.py`)",
        "",
        f"`kdforge run`: {data['empty_teacher_cache_s']:.0f} s with an empty teacher cache (teacher trained), "
        f"{data['cached_teacher_s']:.0f} s with the cached teacher (limit {data['limit_s']} s). Test accuracy: teacher "
        f"{100 * rows['teacher']['accuracy']:.2f}%, scratch {100 * rows['scratch']['accuracy']:.2f}%, "
        f"KD {100 * rows['kd']['accuracy']:.2f}%.",
        "",
    ]


def ddp_section(data: dict) -> list[str]:
    """1 vs 2 processes."""
    one, two = data["one_process"], data["two_processes"]
    return [
        "",
        "### One process vs two (`benchmarks/ddp_compare.py`)",
        "",
        f"{data['recipe']} on the full training split (2 epochs), `torchrun --nproc_per_node 2` "
        f"(gloo, world size asserted = {two['world_size']}): test "
        f"accuracy {100 * one['test']['accuracy']:.2f}% on 1 process vs {100 * two['test']['accuracy']:.2f}% on 2 "
        f"(gap {data['accuracy_gap_points']:.2f} points); training wall time {one['train_wall_s']:.1f} s vs "
        f"{two['train_wall_s']:.1f} s on a 2-core machine.",
    ]


def views_section(data: dict) -> list[str]:
    """KD with augmentation: live teacher vs stores of views."""
    lines = [
        "",
        "### Augmented views from the store (`benchmarks/store_views.py`)",
        "",
        f"{data['setting']}; seeds {data['seeds']}. Store build: "
        + ", ".join(
            f"{name.removeprefix('views')} view(s) {s['seconds']:.1f} s, {s['size_bytes'] / 1e6:.2f} MB"
            for name, s in data["stores"].items()
        )
        + ".",
        "",
    ]
    rows = accuracy_rows(data["settings"], ("test_last", "test_best"))
    for row, r in zip(rows, data["settings"].values(), strict=True):
        row.append(f"{r['train_wall_s']['mean']:.1f} ± {r['train_wall_s']['std']:.1f}")
    header = ["teacher signal", "test accuracy, last epoch", "best epoch", "training wall time (s)"]
    return lines + table(header, rows)


def streaming_section(data: dict) -> list[str]:
    """A store read from disk: shard-local order and prefetch vs random order."""
    st = data["store"]
    lines = [
        "",
        "### Streaming a store from disk (`benchmarks/store_streaming.py`)",
        "",
        f"{st['rows']:,} Fashion-MNIST rows ({st['fields']}), {st['shards']} shards, "
        f"{st['size_bytes'] / 1e6:.1f} MB; one epoch of KD steps (MLP[256] student, batch {data['batch']}), "
        f"LRU of {data['lru_shards']} shards.",
        "",
    ]
    rows = [
        [name, f"{m['median_step_ms']:.2f}", f"{m['epoch_s']:.1f}", f"{m['shard_reads_waited_for']:,}"]
        for name, m in data["modes"].items()
    ]
    return lines + table(["read mode", "median step (ms)", "epoch (s)", "shard reads a step waited for"], rows)


def files_text_section(data: dict) -> list[str]:
    """Own text files (CSV and JSONL) through `files`: MiniLM teacher, two students, scratch vs KD, export."""
    d, cj = data["data"], data["csv_vs_jsonl"]
    lines = [
        "",
        "### Text from your own files (`benchmarks/files_text.py`)",
        "",
        f"{d['corpus']} ({', '.join(d['classes'])}; {d['train_rows']} train / {d['test_rows']} test tweets sampled "
        f"from {d['documents_in_corpus']:,}), written as CSV and JSONL and read by `files` (minilm tokenizer, max_len "
        f"{data['max_len']}); teacher all-MiniLM-L6-v2, frozen encoder + linear head, precomputed: test accuracy "
        f"{100 * data['teacher_test']['accuracy']:.2f}%. {len(data['seeds'])} seeds, {data['epochs']} epochs; test "
        "accuracy in % at the last epoch (mean ± std). CSV and JSONL give the same token ids, masks and labels and "
        f"the same accuracy: {'yes' if cj['same_rows_and_accuracy'] else 'no'}.",
        "",
    ]
    rows = [
        [key, *(pm(e["methods"][m]["test_last"]) for m in ("scratch", "kd"))] for key, e in data["students"].items()
    ]
    lines += table(["student", "scratch (CE)", "KD (0.5 CE + 0.5 KD, T=4)"], rows)
    hf, onnx = data["export"]["hf"], data["export"]["onnx"]
    lat = onnx["latency_ms"]
    lines += [
        "",
        f"`kdforge export` of the KD-trained BERT (seed 0): HF folder max |Δ| {hf['parity']['max_abs_diff']:.2g}, "
        f"ONNX max |Δ| {onnx['parity']['max_abs_diff']:.2g} on {onnx['parity']['rows']} test rows; latency per "
        f"forward (median), onnxruntime vs PyTorch: batch 1 {lat['batch_1']['onnxruntime']:.2f} vs "
        f"{lat['batch_1']['pytorch']:.2f} ms, batch 256 {lat['batch_256']['onnxruntime']:.0f} vs "
        f"{lat['batch_256']['pytorch']:.0f} ms.",
    ]
    return lines


def files_images_section(data: dict) -> list[str]:
    """Own PNG folders through `files` against the built-in Fashion-MNIST loader, same samples."""
    lines = [
        "",
        "### Images from your own folders (`benchmarks/files_images.py`)",
        "",
        f"The first {data['train_images']:,} training and {data['test_images']:,} test Fashion-MNIST images, as IDX "
        f"files for the built-in loader and as PNG class folders for `files`; student {data['student']}, CE, "
        f"{data['epochs']} epochs, seeds {data['seeds']}. Throughput: one shuffled epoch of the training split in "
        "batches of 128 through `make_loader`, median of 3.",
        "",
    ]
    rows = [
        [key, pm(v["test_last"]), f"{data['throughput'][key]['images_per_s']:,.0f}"]
        for key, v in data["sources"].items()
    ]
    lines += table(["data set", "test accuracy, last epoch", "loader images/s"], rows)
    lines += ["", f"files − built-in: {data['gap_points']:+.2f} points."]
    return lines


def sparse_memory_section(data: dict) -> list[str]:
    """Peak memory of the sparse top-k kernels against the dense reconstruction."""
    p = data["peak_mb"]
    rows = [
        [name, f"{p[f'{key}_sparse']:.0f}", f"{p[f'{key}_dense']:.0f}"]
        for name, key in (("kd (forward KL)", "kd"), ("jsd (β = 0.5)", "jsd"), ("reverse_kl", "reverse_kl"))
    ]
    return [
        "",
        "### Top-k teacher signals without a vocabulary-sized teacher tensor (`benchmarks/sparse_memory.py`)",
        "",
        f"Peak live tensor memory (MB) of forward + backward over {data['tokens']} tokens, a {data['vocab']:,}-word "
        f"vocabulary and a top-{data['k']} signal; one tokens × vocabulary float32 tensor is "
        f"{data['one_tokens_x_vocab_mb']:.0f} MB, and the student's own log-softmax + entropy peak at "
        f"{p['student_only']:.0f} MB.",
        "",
        *table(["objective", "sparse kernel", "dense reconstruction"], rows),
    ]


def llm_annotate_section(data: dict) -> list[str]:
    """No training labels: each teacher's agreement with gold and the student trained on its labels."""
    setup, teachers = data["setup"], data["teachers"]
    gold = teachers["gold"]["students"]["gold"]
    lines = [
        "### No training labels: an LLM annotates Reuters R8 (`benchmarks/llm_annotate.py`)",
        "",
        f"{setup['annotated_training_texts']} training texts ({setup['subset']}) annotated by each teacher; a "
        f"{setup['student']} student ({setup['student_training']}) learns the teacher's soft labels (kd against the "
        f"annotations) or its hard labels (ce on its argmax), tested on the {setup['test_texts']} gold-labelled test "
        f"texts; {len(setup['seeds'])} seeds. The same student on the gold labels of the same texts: "
        f"**{pm(gold)}%**.",
        "",
    ]
    rows = []
    order = ["gemma-local", "gemma-local (raw names, uncalibrated)", "smollm2-llama.cpp", "smollm2-chat", "minilm"]
    for name in sorted((n for n in teachers if n != "gold"), key=lambda n: order.index(n) if n in order else 99):
        t = teachers[name]
        s = t["students"] or {}
        rows.append([
            name, f"`{t['method']}`" + (" + calibration" if t["calibrated"] else ""), f"{100 * t['accuracy']:.1f}%",
            f"{t['cohen_kappa']:.3f}", f"{t['coverage']:.2f}",
            pm(s["soft"]) if s else "–", pm(s["hard"]) if s else "–",
        ])  # fmt: skip
    lines += table(
        ["teacher", "method", "teacher–gold acc", "κ", "coverage", "student (soft) %",
         "student (hard) %"], rows,
    )  # fmt: skip
    lines += [
        "",
        "LLM teachers ask and score labels by plain words (earnings, acquisition, oil, trade, currency, interest, "
        "shipping, grain) after `Article: … Topic:`; calibration divides by the scores of the content-free input "
        "`N/A`. “–”: no student trained — SmolLM2's chat answers are rarely a label word (those texts are recorded "
        "unknown, never guessed), and the raw-names row is a baseline for the wording.",
    ]
    gap = data.get("gemma_local_vs_llama_cpp")
    if gap:
        lines += [
            "",
            f"Gemma-3-270M in process vs through llama.cpp's server (same GGUF, `score_mode: next_token`, a seeded "
            f"{gap['rows']}-text subset: llama-cpp-python sorts and formats the 262k-token distribution in Python, "
            "seconds per request here): "
            f"the same label on {100 * gap['same_label']:.1f}% of the texts, mean total-variation distance between "
            f"their calibrated distributions {gap['mean_total_variation']:.3f}; teacher–gold accuracy "
            f"{100 * gap['gold_accuracy_in_process']:.1f}% in process vs {100 * gap['gold_accuracy_llama_cpp']:.1f}% "
            "over HTTP.",
        ]
    return [*lines, ""]


def llm_teach_section(data: dict) -> list[str]:
    """The teaching loop against its random control: test accuracy per round."""
    setup, runs = data["setup"], data["runs"]
    rounds = len(runs["errors"]["test_by_round"])
    lines = [
        "### Teaching loop vs a random control (`benchmarks/llm_teach.py`)",
        "",
        f"R8, {setup['seed_set']} labelled seed texts, a {setup['pool']}-text unlabeled pool, a {setup['dev']}-text "
        f"dev set; each round the teacher ({setup['teacher']}) annotates {setup['per_round']} pool texts — the nearest "
        f"to the student's dev errors, or (control) random ones — and the student ({setup['student']}) is retrained; "
        f"{len(setup['seeds'])} seeds, test accuracy %:",
        "",
    ]
    rows = [[name, *(pm(runs[name]["test_by_round"][r]) for r in range(rounds))] for name in ("errors", "random")]
    lines += table(["selection", *(f"round {r}" for r in range(rounds))], rows)
    return [*lines, ""]


def llm_throughput_section(data: dict) -> list[str]:
    """Annotation throughput by concurrency and server count; the re-run's requests at the server."""
    setup, results = data["setup"], data["results"]
    lines = [
        "### Annotation throughput (`benchmarks/llm_throughput.py`)",
        "",
        f"{setup['texts']} R8 texts, {setup['model']} served by {setup['server']} ({setup['method']}), cold request "
        "cache each time:",
        "",
    ]
    rows = [[name, f"{r['texts_per_s']:.2f}", f"{r['seconds']:.1f}", str(r["requests"])] for name, r in results.items()
            if not name.startswith("re-run")]  # fmt: skip
    lines += table(["setup", "texts/s", "seconds", "requests"], rows)
    one = results.get("one server, concurrency 1")
    two = results.get("two servers, concurrency 16")
    if one and two:
        lines += [
            "",
            "llama-cpp-python's server computes one request at a time, so concurrency against one server only overlaps "
            f"HTTP and Python work; two server processes behind one job (one thread each, the same 2 cores) give "
            f"{two['texts_per_s'] / one['texts_per_s']:.2f}× the texts/s of one server at concurrency 1. On separate "
            "machines the servers add their own cores.",
        ]
    rerun = results.get("re-run of the finished job")
    if rerun:
        lines += ["", f"Re-running the finished job: {rerun['requests_at_server']} requests reached the server."]
    return [*lines, ""]


def llm_vocab_section(data: dict) -> list[str]:
    """Gemma-3-270M teacher → SmolLM2-tokenizer student: shared tokens, aligned positions, dropped mass."""
    v = data["vocab"]["gemma_teacher_smollm2_student"]
    pos, drop, ident = data["positions"], data["dropped_teacher_mass_at_aligned"], data["token_identity"]
    uld = data["uld_blindness"]
    return [
        "### Two tokenizers: Gemma-3-270M teacher, SmolLM2 student (`benchmarks/llm_vocab.py`)",
        "",
        f"{v['shared']:,} tokens are shared (matched by the bytes they stand for; "
        f"{data['vocab']['shared_by_exact_spelling']:,} by spelling): {100 * v['student_shared_fraction']:.1f}% of the "
        f"student's {v['student_tokens']:,}, {100 * v['teacher_shared_fraction']:.1f}% of the teacher's "
        f"{v['teacher_tokens']:,}. On {pos['student_positions']:,} student positions of held-out text, "
        f"{100 * pos['aligned_fraction']:.1f}% end at the same character as a teacher position and get the mapped "
        f"teacher distribution; the mass dropped there (teacher-only tokens) is {100 * drop['mean']:.1f}% on average "
        f"(median {100 * drop['median']:.1f}%, p99 {100 * drop['p99']:.0f}%). The mapped distribution's top token is "
        f"the student's next token {100 * ident['mapped_top1_accuracy']:.1f}% of the time (the teacher's own top-1 "
        f"on its tokens: {100 * ident['teacher_top1_accuracy']:.1f}%). ULD's sorted-probability loss gives a "
        f"token-shuffled copy of the target the same value ({uld['uld_token_shuffled_copy']:.4f} vs "
        f"{uld['uld_mapped_teacher_as_student']:.4f}) although the two are {uld['kl_mapped_vs_shuffled']:.1f} nats "
        f"apart in KL, and index pairing compares the same prefix at only "
        f"{100 * pos['index_paired_same_prefix_fraction']:.0f}% of positions: hence the direct map.",
        "",
    ]


def _mean_sd(values: list[float]) -> str:
    """'mean ± sd' over seeds (the sd with n − 1; only the mean for one seed)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "–"
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{m:,.1f}"
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return f"{m:,.1f} ± {sd:,.1f}"


def llm_quality_section(data: dict) -> list[str]:
    """Austen, SmolLM2-135M → a ~7M Llama: every arm on the same steps and tokens."""
    b, runs = data["budget"], data.get("runs", {})
    rows = []
    for arm, by_seed in runs.items():
        rs = list(by_seed.values())
        gen = [r.get("generation_s") for r in rs if r.get("generation_s")]
        rows.append(
            [
                arm,
                _mean_sd([r["perplexity"] for r in rs]),
                f"{100 * sum(r['accuracy'] for r in rs) / len(rs):.1f}%",
                f"{100 * sum(r['agreement'] for r in rs) / len(rs):.1f}%",
                f"{sum(r['kl'] for r in rs) / len(rs):.3f}",
                f"{sum(r['s_per_step'] for r in rs) / len(rs):.2f}",
                f"{sum(gen) / len(gen):.0f}" if gen else "–",
                str(len(rs)),
            ]
        )
    teacher = (data.get("teacher_test") or {}).get("perplexity", "–")
    lines = [
        "### Causal-LM distillation on Austen (`benchmarks/llm_quality.py`)",
        "",
        f"SmolLM2-135M-Instruct teacher (test perplexity {teacher}), {data['benchmark'].split('-> ')[-1]} student, "
        f"every arm {b['steps']} steps × {b['batch_size']} × {b['max_len']} tokens ({b['tokens_per_arm']:,} tokens, "
        f"one epoch of the same blocks), AdamW lr {b['lr']}; test = {b['test_tokens']:,} tokens of *Persuasion*. "
        "Perplexity is mean ± sd over the seeds listed. Teacher signals come from a top-64 store built once "
        "(`kdforge cache`) except where the arm says live. A small budget on a 2-core CPU (chosen so the slowest, "
        "live-teacher arm stays within 10 minutes): the student is far from converged, so the table ranks objectives "
        "early in training, not at their best. No GPU was lent for a larger budget.",
        "",
        *table(
            ["arm", "test perplexity", "token acc", "agreement", "KL/token", "s/step", "generation s", "seeds"], rows
        ),
    ]
    lines += ["", *(f"- {n[0].upper()}{n[1:]}." for n in data.get("notes", [])[1:])]
    svd = data.get("store_vs_dense", {})
    names = {"top64": "Top-64", "top32": "Top-32", "top64_bucket": "Top-64 with the bucket tail"}
    for k, label in names.items():
        c = svd.get(k)
        if c:
            verdict = "within" if c["within_2pct"] else "not within"
            lines += [
                "",
                f"{label} from the store vs the dense live teacher (seed 0, same blocks and steps): "
                f"perplexity {c['perplexity']:,.1f} vs {c['dense_perplexity']:,.1f} "
                f"(ratio {c['perplexity_ratio']:.3f}, {verdict} 2%), "
                f"step time {c['s_per_step']:.2f} vs {c['dense_s_per_step']:.2f} s "
                f"({c['step_time_ratio']:.2f}×; the store was built once in "
                f"{data['stores'].get(k.split('_')[0], {}).get('build_s', float('nan')):.0f} s).",
            ]
    return [*lines, ""]


def llm_cross_quality_section(data: dict) -> list[str]:
    """Gemma-3-270M → a SmolLM2-tokenizer student: CE-only vs cross-tokenizer distillation, same budget."""
    b, runs = data["budget"], data.get("runs", {})
    rows = [
        [
            arm,
            _mean_sd([r["perplexity"] for r in rs.values()]),
            f"{100 * sum(r['accuracy'] for r in rs.values()) / len(rs):.1f}%",
            f"{sum(r['s_per_step'] for r in rs.values()) / len(rs):.2f}",
            str(len(rs)),
        ]
        for arm, rs in runs.items()
    ]
    vocab = next((r["vocabulary"] for r in runs.get("cross", {}).values() if r.get("vocabulary")), None) or {}
    lines = [
        "### Cross-tokenizer distillation: Gemma-3-270M → SmolLM2's tokenizer (`benchmarks/llm_cross_quality.py`)",
        "",
        f"The same ~7.1M Llama student (SmolLM2's 49,152 tokens), {b['steps']} steps × {b['batch_size']} × "
        f"{b['max_len']} tokens per arm, test on {b['test_blocks']} blocks of *Persuasion*. `ce`: labels only; "
        "`cross`: 0.5·CE + 0.5·forward KL to Gemma-3-270M (262,144 tokens, run live: ~10× the student's step) "
        "mapped onto the shared tokens at aligned positions.",
    ]
    if vocab:
        lines[-1] += (
            f" Shared tokens: {vocab['shared']:,} ({100 * vocab['student_shared_fraction']:.1f}% of the student's); "
            f"student positions with a teacher target: {100 * vocab['aligned_fraction']:.1f}%; teacher mass dropped "
            f"there: {100 * vocab['mean_dropped_mass']:.1f}% on average."
        )
    notes = [f"- {n[0].upper()}{n[1:]}." for n in data.get("notes", [])]
    return [*lines, "", *table(["arm", "test perplexity", "token acc", "s/step", "seeds"], rows), "", *notes, ""]


def llm_miniplm_section(data: dict) -> list[str]:
    """MiniPLM difference sampling vs random selection of the same number of documents."""
    arms = data["arms"]
    rows = [
        [
            arm,
            str(a["documents"]),
            f"{a['mean_score']:.2f}",
            f"{a['final_ppl']['mean']:,.0f} ± {a['final_ppl']['std']:,.0f}",
        ]
        for arm, a in arms.items()
    ]
    st = data["student"]
    return [
        "### MiniPLM difference sampling (`benchmarks/llm_miniplm.py`)",
        "",
        f"Score = {data['score']}; teacher {data['teacher']}, reference {data['reference']['arch']}. Pool of "
        f"{data['pool']} Austen documents, {int(100 * data['fraction'])}% kept; students ({st['arch']}, "
        f"{st['params']:,} parameters) trained {st['steps']} steps on each selection, held-out perplexity on "
        f"{data['held_out']['tokens']:,} tokens of *{data['held_out']['novel']}*; "
        f"{max(a['final_ppl']['n'] for a in arms.values())} seed(s) finished"
        + ("" if data.get("complete") else " (the run was stopped before its second seed: one seed only)")
        + ". The difference-sampled half has a higher mean score by construction; the perplexities below are the "
        "test of whether that helps the student.",
        "",
        *table(["selection", "documents", "mean score", "held-out perplexity"], rows),
        "",
    ]


def llm_loss_memory_section(data: dict) -> list[str]:
    """Chunked token losses vs full logits vs TRL's generalized_jsd_loss: peak memory and time of one step."""
    sz, summary = data["sizes"], data["summary"]
    rows = []
    for name, r in summary.items():
        kind, impl = name.split("/")
        rows.append(
            [
                kind,
                impl.replace("kdforge_c", "kdforge, chunk "),
                f"{r['rss_peak_mb']:,.0f}",
                f"{r['rss_peak_vs_naive']:.2f}×",
                f"{r['median_s']:.1f}",
                f"{r['time_vs_naive_median_of_round_ratios']:.2f}×",
            ]
        )
    return [
        "### Memory-bounded token losses (`benchmarks/llm_loss_memory.py`)",
        "",
        f"One step (forward + backward from the student's hidden states and LM head, the head matmuls included) at "
        f"vocabulary {sz['vocab']:,} and {sz['batch']} × {sz['seq']:,} tokens, width {sz['hidden_student']}, fp32, "
        f"CPU; TRL {data['trl']['version']} in a throwaway environment. Peak = RSS high-water mark in a fresh process "
        "per arm (kdforge's tensor counter agrees within 2%); time = median of interleaved rounds, as a ratio to the "
        f"naive arm of the same round ({data['method']['time']}; another benchmark shared the 2 cores). kdforge's "
        "JSD and forward KL use their closed-form gradients. The issue's target is ≤ 0.25× the naive peak at ≤ 1.3× "
        "its time.",
        "",
        *table(["loss", "implementation", "peak MB", "vs naive", "s/step", "time vs naive"], rows),
        "",
    ]


def _gain(a: dict, b: dict) -> str:
    """a − b in points of accuracy, with the larger of the two stds for scale."""
    return f"{100 * (a['mean'] - b['mean']):+.2f} points (std ≤ {100 * max(a['std'], b['std']):.2f})"


def _strategy_differences(parts: dict) -> list[str]:
    """The differences each must-show claim is about, computed from the means (what held and what did not)."""
    out = []
    if "mutual" in parts:
        p = parts["mutual"]
        out.append(
            f"mutual − alone: s0 {_gain(p['mutual_s0'], p['alone_s0'])}, s1 {_gain(p['mutual_s1'], p['alone_s1'])}"
        )
    if "born_again" in parts:
        p = parts["born_again"]
        verdict = "" if p["gen-2"]["mean"] >= p["gen-1"]["mean"] >= p["gen-0"]["mean"] else " (no born-again gain here)"
        out.append(
            f"born_again generation 2 − generation 1: {_gain(p['gen-2'], p['gen-1'])}; generation 1 − generation 0: "
            f"{_gain(p['gen-1'], p['gen-0'])}{verdict}"
        )
    if "assistant" in parts:
        p = parts["assistant"]
        out.append(f"assistant chain − direct KD: {_gain(p['via_assistant'], p['direct_kd'])}")
    if "ensemble" in parts:
        p = parts["ensemble"]
        t = p["teacher_test_accuracy"]
        out.append(
            f"multi_teacher: the ensemble is {100 * (t['ensemble_mean'] - max(t['members'])):+.2f} points above its "
            f"best member as a classifier; its student {_gain(p['student_of_ensemble'], p['student_of_best_single'])} "
            "against the best member's student"
        )
    if "ensemble_cnn" in parts:
        p = parts["ensemble_cnn"]
        out.append(
            f"multi_teacher with a CNN student: {_gain(p['student_of_ensemble'], p['student_of_best_single'])} "
            "for the ensemble's student"
        )
    for key, label in (("labels_0.01", "1%"), ("labels_0.1", "10%")):
        if "mean_teacher" in parts and key in parts["mean_teacher"]:
            p = parts["mean_teacher"][key]
            out.append(f"mean_teacher − supervised, Fashion-MNIST {label}: {_gain(p['mean_teacher'], p['supervised'])}")
    if "r8" in parts:
        p = parts["r8"]
        out.append(f"mean_teacher − supervised, R8 5%: {_gain(p['mean_teacher'], p['supervised'])}")
    return out


def strategies_section(data: dict) -> list[str]:
    """Teaching strategies, 3 seeds each: each strategy next to the baseline it must beat, and step-time ratios."""
    parts = data["parts"]
    lines = ["### Teaching strategies (`benchmarks/strategies.py`)", ""]
    lines.append(
        "Test accuracy, mean ± std over seeds 0-2 (each row pairs runs of the same seed). Each strategy runs from its "
        "built-in recipe (`kdforge recipes`) with the setting quoted."
    )
    lines.append("")
    rows = []
    if "mutual" in parts:
        p = parts["mutual"]
        rows += [
            [
                "mutual",
                "student s0 (mutual / alone, same initial weights)",
                f"{pm(p['mutual_s0'])} / {pm(p['alone_s0'])}",
            ],
            ["mutual", "student s1 (mutual / alone)", f"{pm(p['mutual_s1'])} / {pm(p['alone_s1'])}"],
        ]
    if "born_again" in parts:
        p = parts["born_again"]
        gens = " → ".join(pm(p[k]) for k in ("gen-0", "gen-1", "gen-2"))
        rows.append(["born_again", "generation 0 → 1 → 2 (CE + KD)", gens])
        rows.append(["born_again", "ensemble of generations 0-2", pm(p["ensemble_of_generations"])])
        if "cwtm" in p:
            rows.append(
                ["born_again", "CWTM: generation 0 → 1", f"{pm(p['cwtm']['gen-0'])} → {pm(p['cwtm']['gen-1'])}"]
            )
    if "assistant" in parts:
        p = parts["assistant"]
        rows.append(
            [
                "assistant",
                "mlp[8] student: via the mlp[256] assistant / direct KD",
                f"{pm(p['via_assistant'])} / {pm(p['direct_kd'])}",
            ]
        )
        rows.append(["assistant", "the assistant itself", pm(p["assistant"])])
    if "ensemble" in parts:
        p = parts["ensemble"]
        t = p["teacher_test_accuracy"]
        members = ", ".join(f"{100 * a:.2f}" for a in t["members"])
        rows.append(
            [
                "multi_teacher",
                "student of the 3-CNN mean / of the best single CNN",
                f"{pm(p['student_of_ensemble'])} / {pm(p['student_of_best_single'])}",
            ]
        )
        rows.append(["multi_teacher", "teachers: members / their mean", f"{members} / {100 * t['ensemble_mean']:.2f}"])
    if "ensemble_cnn" in parts:
        p = parts["ensemble_cnn"]
        rows.append(
            [
                "multi_teacher",
                "cnn[16,32,64] student of the 3-CNN mean / of the best single CNN",
                f"{pm(p['student_of_ensemble'])} / {pm(p['student_of_best_single'])}",
            ]
        )
    for key, label in (("labels_0.01", "1%"), ("labels_0.1", "10%")):
        if "mean_teacher" in parts and key in parts["mean_teacher"]:
            p = parts["mean_teacher"][key]
            rows.append(
                [
                    "mean_teacher",
                    f"Fashion-MNIST, {label} labels: student (EMA) / supervised on the same labels",
                    f"{pm(p['mean_teacher'])} ({pm(p['mean_teacher_ema'])}) / {pm(p['supervised'])}",
                ]
            )
    if "r8" in parts:
        p = parts["r8"]
        rows.append(
            [
                "mean_teacher",
                "Reuters R8 files, 5% labels: student (EMA) / supervised",
                f"{pm(p['mean_teacher'])} ({pm(p['mean_teacher_ema'])}) / {pm(p['supervised'])}",
            ]
        )
    lines += table(["strategy", "comparison", "test accuracy %"], rows)
    lines.append("")
    lines += [f"- {line}" for line in _strategy_differences(parts)]
    for name in ("mutual", "born_again", "assistant", "ensemble", "ensemble_cnn", "mean_teacher", "r8"):
        if name in parts:
            lines.append(f"- {name}: {parts[name]['setting']}.")
    if "step_time" in parts:
        p = parts["step_time"]
        lines += ["", f"Step time, {p['setting']}:", ""]
        lines += table(["ratio", "value"], [[k, f"{v:.2f}×"] for k, v in p["ratios"].items()])
        share = 100 * p["ema_update_share_of_mean_teacher_step"]
        lines += ["", f"The EMA update takes {1000 * p['ema_update_s']:.2f} ms, {share:.1f}% of a mean-teacher step."]
    return [*lines, ""]


FEATURE_METHODS = ("scratch", "kd", "fitnet", "at", "rkd", "crd", "ofa")
STUDENT_LABELS = {
    "cnn": "CNN teacher → cnn[16,32,64] (single conv per width)",
    "mlp": "CNN teacher → mlp[256] (cross-architecture)",
}


def _term(objectives: dict) -> str:
    """The method's own term as the recipe writes it (CE left out)."""
    parts = [
        f"`{k}`" + (f" {json.dumps(v, separators=(',', ':'))}" if isinstance(v, dict) else f" {v}")
        for k, v in objectives.items()
        if k != "ce"
    ]
    return ", ".join(parts) or "`ce` only"


def features_section(data: dict) -> list[str]:
    """The Fashion-MNIST feature-KD tables: one per teacher/student pair, methods as rows."""
    lines = ["", "### Feature, relation and cross-architecture KD on Fashion-MNIST (`benchmarks/features.py`)", ""]
    lines.append(
        f"5,400 transfer images, {data['epochs']:g} epochs, seeds 0-2, test accuracy (%) at the last epoch and at "
        "the best validation epoch; the teacher is the demo's CNN. Each feature method is CE 1 plus its term at "
        "mdistiller's CIFAR-100 weight (nothing tuned here); KD is the demo's validation-chosen setting."
    )
    for student, rows in data["tables"].items():
        body = []
        for method in FEATURE_METHODS:
            cell = rows.get(method)
            if cell is None:
                continue
            if cell.get("not_applicable"):
                body.append([method, "n/a", "n/a", "an MLP has no spatial map to attend over"])
                continue
            body.append([method, pm(cell["test_last"]), pm(cell["test_at_best_val"]), _term(cell["objectives"])])
        teacher = next((c["teacher"]["mean"] for c in rows.values() if "teacher" in c), None)
        head = STUDENT_LABELS.get(student, student)
        lines += ["", f"**{head}** (teacher {100 * teacher:.2f}%)" if teacher else f"**{head}**", ""]
        lines += table(["method", "test, last", "test at best val", "term"], body)
        lines += ["", _against_scratch(rows)]
    return lines


def _against_scratch(rows: dict) -> str:
    """Which methods beat scratch by more than both spreads, which fall below it, which tie (last-epoch accuracy)."""
    base = rows["scratch"]["test_last"]
    verdicts: dict[str, list[str]] = {"above": [], "below": [], "tie": []}
    for method, cell in rows.items():
        if method == "scratch" or cell.get("not_applicable"):
            continue
        stat = cell["test_last"]
        gap = 100 * (stat["mean"] - base["mean"])
        margin = 100 * (stat["std"] + base["std"])
        kind = "tie" if abs(gap) <= margin else ("above" if gap > 0 else "below")
        verdicts[kind].append(f"{method} {gap:+.2f}")
    parts = [f"{k} scratch (beyond both stds): {', '.join(v)}" for k, v in verdicts.items() if v and k != "tie"]
    if verdicts["tie"]:
        parts.append(f"within the spread: {', '.join(verdicts['tie'])}")
    return "Against scratch: " + "; ".join(parts) + "."


def features_text_section(data: dict) -> list[str]:
    """MiniLMv2 relations on R8: the student with and without the relation term."""
    lines = ["", "### MiniLMv2 relations on Reuters R8 (`benchmarks/features_text.py`)", ""]
    conditions = data["conditions"]
    teacher = next(iter(conditions.values()))["teacher"]["mean"]
    lines.append(
        f"all-MiniLM-L6-v2 with a linear probe on its frozen embeddings (teacher {100 * teacher:.2f}%) teaches a "
        f"randomly initialised 2-layer BERT (hidden 128, 2 heads) trained with its own head, {data['epochs']:g} "
        f"epochs at {data['max_len']} tokens, {len(next(iter(conditions.values()))['test_last']['values'])} seeds; "
        "relations between the last layers, 8 relation heads on both sides."
    )
    lines.append("")
    rows = [[name, pm(c["test_last"]), pm(c["test_at_best_val"])] for name, c in conditions.items()]
    lines += table(["student objectives", "test, last", "test at best val"], rows)
    if "ce" in conditions and "ce+relations" in conditions:
        a, b = conditions["ce"]["test_last"], conditions["ce+relations"]["test_last"]
        gap, spread = 100 * (b["mean"] - a["mean"]), 100 * (a["std"] + b["std"])
        lines += [
            "",
            f"Relations add {gap:+.2f} points (sum of the two stds {spread:.2f}); both students beat their "
            f"teacher's linear probe ({100 * teacher:.2f}%), a probe on frozen sentence embeddings.",
        ]
    return lines


def main() -> None:
    """Rewrite the README between the markers."""
    lines: list[str] = []
    for name, render in (
        ("demo_time", demo_section),
        ("fmnist_methods", methods_section),
        ("label_scarce", label_scarce_section),
        ("overhead", overhead_section),
        ("store_throughput", store_section),
        ("sparse_codecs", sparse_section),
        ("sparse_memory", sparse_memory_section),
        ("shard_format", shard_format_section),
        ("store_views", views_section),
        ("store_streaming", streaming_section),
        ("text_store", text_section),
        ("files_text", files_text_section),
        ("files_images", files_images_section),
        ("ddp", ddp_section),
        ("llm_annotate", llm_annotate_section),
        ("llm_teach", llm_teach_section),
        ("llm_throughput", llm_throughput_section),
        ("llm_loss_memory", llm_loss_memory_section),
        ("llm_vocab", llm_vocab_section),
        ("llm_quality", llm_quality_section),
        ("llm_cross_quality", llm_cross_quality_section),
        ("llm_miniplm", llm_miniplm_section),
        ("strategies", strategies_section),
        ("features", features_section),
        ("features_text", features_text_section),
    ):
        data = load(name)
        if data is not None:
            lines += render(data)
    text = README.read_text()
    block = "\n".join([START, *lines, END])
    README.write_text(re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print("README results updated")


if __name__ == "__main__":
    main()
