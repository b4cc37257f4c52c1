"""LLM teacher and causal-LM distillation sections."""

from __future__ import annotations

from kdforge.bench.readme.markdown import mean_sd, pm, table


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
                mean_sd([r["perplexity"] for r in rs]),
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
            mean_sd([r["perplexity"] for r in rs.values()]),
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
