"""Teacher-signal store and file-data sections."""

from __future__ import annotations

from kdforge.bench.readme.markdown import accuracy_rows, pm, table


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
