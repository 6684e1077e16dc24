#!/usr/bin/env python3
"""Luth benchmarks (luth.md section 6) -> `luthier lm eval` task files, and results -> the paper's table.

Nothing is downloaded: the user fetches the datasets (e.g. `huggingface-cli download --repo-type
dataset openai/MMMLU --local-dir data/bench/mmmlu`) and points this script at the files. Inputs are
JSON, JSONL or parquet (parquet needs pandas with pyarrow); a directory is read file by file.

    python3 scripts/convert_luth_benchmarks.py convert BENCH INPUT [INPUT...] --out TASK.jsonl [--seed S]
    python3 scripts/convert_luth_benchmarks.py table --model NAME=RESULTS.json [--model ...] [--lang fr|en|both]

Benchmarks (task file names as the table expects them; prompts exactly as luth.md section 6.2 gives):

  BENCH               dataset (split) and expected fields                       type  metric in the table
  mmlu_fr             openai/MMMLU FR_FR (test): Question, A, B, C, D, Answer   mc    acc
  mmlu_en             cais/mmlu all (test): question, subject, choices, answer   mc    acc
  arc_challenge_fr    manu/french_bench_arc_challenge (test): question,          mc    acc_norm_nospace (Luth's
                      choices {text, label} or option1..4 / A..D, answerKey             loglikelihood_acc_norm_nospace)
  arc_challenge_en    allenai/ai2_arc ARC-Challenge (test): same fields          mc    acc_norm_nospace
  hellaswag_fr        manu/french_bench_hellaswag (validation): ctx_a, ctx_b,    gen   em (1 new token, " A"..)
                      endings, label
  hellaswag_en        Rowan/hellaswag (validation): same fields                  mc    acc_norm (LightEval leaderboard
                                                                                         task: log-likelihood of endings)
  gpqa_diamond_fr     le-leadboard/gpqa-fr gpqa_diamond: Question, Correct       gen   em of the extracted letter
                      Answer, Incorrect Answer 1..3
  gpqa_diamond_en     Idavidrein/gpqa gpqa_diamond: same fields                  gen   em of the extracted letter
  math_500_fr         bezir/MATH-500-multilingual French (test): problem, answer gen   qem of the \\boxed{} content
  math_500_en         HuggingFaceH4/MATH-500 (test): problem, answer             gen   qem of the \\boxed{} content
  ifeval_fr           jzhang86/fr_ifeval (train): prompt, instruction_id_list,   ifeval prompt_level_strict_acc
                      kwargs
  ifeval_en           google/IFEval (train): same fields                         ifeval prompt_level_strict_acc

Differences from LightEval, stated so the numbers are read correctly: math answers are compared
as normalised strings, not with sympy equivalence (so the score is a lower bound); GPQA's correct
answer is placed at random.Random(seed) positions, once, not re-shuffled per run; IFEval's checkers
(models/ifeval.h) identify languages without langdetect and count sentences with a reduced Punkt
model. Generative items carry max_new_tokens 1 (hellaswag_fr), 2048 (gpqa, math; Luth allowed up to
8192), 1280 (ifeval_en, LightEval's generation_size) or 1024 (ifeval_fr, Luth's task).

The table: rows = benchmarks (ifeval, gpqa-diamond, mmlu, math-500, arc-chall, hellaswag, with the
-fr / -en suffix of the blog), columns = the --model names in order (e.g. base, SFT, merged),
values = metric x 100 with two decimals, "—" where a result is missing.
"""
import argparse
import json
import os
import random
import sys

LETTERS = "ABCDEFGHIJ"

GPQA_FR = ("Répondez à la question à choix multiple suivante. La dernière ligne de votre réponse doit avoir le "
           "format suivant : 'Réponse : $LETTRE' (sans les guillemets) où LETTRE est l'une de A, B, C ou D. "
           "Réfléchissez étape par étape avant de répondre.\n\n{q}\n\nA) {a}\nB) {b}\nC) {c}\nD) {d}")
GPQA_EN = ("Answer the following multiple choice question. The last line of your response should be of the "
           "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step "
           "before answering.\n\n{q}\n\nA) {a}\nB) {b}\nC) {c}\nD) {d}")
MATH_FR = ("Résous le problème de mathématiques suivant de manière efficace et claire. La dernière ligne de ta "
           "réponse doit être au format suivant : 'Donc, la réponse finale est : $\\boxed{{RÉPONSE}}$. J'espère "
           "que c'est correct' (sans les guillemets), où RÉPONSE est simplement le nombre ou l'expression qui "
           "résout le problème. Raisonne étape par étape avant de répondre.\n\n{q}")
MATH_EN = ("Solve the following math problem efficiently and clearly. The last line of your response should be of "
           "the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' "
           "(without quotes) where ANSWER is just the final number or expression that solves the problem. Think "
           "step by step before solving the problem.\n\n{q}")
HELLASWAG_FR = ("Voici une série de questions à choix multiples (avec réponses) pour évaluer le bon sens.\n\n"
                "Question: {ctx}\n{options}\nRéponse:")
# The content of the first \boxed{...}, nested braces included (PCRE2 recursion into group 1).
BOXED = r"\\boxed\{((?:[^{}]+|\{(?1)\})*)\}"


def read_rows(paths):
    """Rows (dicts) of JSON / JSONL / parquet files or directories of them."""
    rows = []
    for path in paths:
        if os.path.isdir(path):
            rows += read_rows(sorted(os.path.join(path, f) for f in os.listdir(path)
                                     if f.endswith((".json", ".jsonl", ".parquet"))))
        elif path.endswith(".parquet"):
            try:
                import pandas
            except ImportError:
                sys.exit(f"{path}: reading parquet needs pandas (pip install pandas pyarrow)")
            rows += pandas.read_parquet(path).to_dict("records")
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.lstrip().startswith("["):
                rows += json.loads(text)
            else:
                rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def field(row, *names):
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    sys.exit(f"row without any of the fields {names}: keys {sorted(row)}")


def as_list(v):
    return list(v.tolist() if hasattr(v, "tolist") else v)


def mmlu_fr(row, rng):
    q = str(field(row, "Question", "question")).strip()
    opts = [str(field(row, k)).strip() for k in "ABCD"]
    body = "".join(f"\n {LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return {"type": "mc", "query": f"Question: {q}{body}\nRéponse:", "choices": [" A", " B", " C", " D"],
            "gold": "ABCD".index(str(field(row, "Answer", "answer")).strip())}


def mmlu_en(row, rng):
    q = str(field(row, "question")).strip()
    opts = as_list(field(row, "choices"))
    subject = str(row.get("subject", "")).replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n" if subject else ""
    body = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    ans = field(row, "answer")
    gold = int(ans) if not isinstance(ans, str) or ans.isdigit() else LETTERS.index(ans.strip())
    return {"type": "mc", "query": f"{head}{q}{body}\nAnswer:",
            "choices": [f" {LETTERS[i]}" for i in range(len(opts))], "gold": gold}


def arc_choices(row):
    if "choices" in row and isinstance(row["choices"], dict):
        texts, labels = as_list(row["choices"]["text"]), [str(x) for x in as_list(row["choices"]["label"])]
    elif "option1" in row:
        texts = [row[f"option{i}"] for i in range(1, 5) if row.get(f"option{i}") is not None]
        labels = [str(i) for i in range(1, len(texts) + 1)]
    else:
        texts = [row[k] for k in "ABCDE" if row.get(k) is not None]
        labels = list("ABCDE"[:len(texts)])
    key = str(field(row, "answerKey", "answer")).strip()
    gold = labels.index(key) if key in labels else "ABCDE".index(key) if key in "ABCDE" else int(key) - 1
    return [str(t) for t in texts], gold


def arc(row, rng):
    texts, gold = arc_choices(row)
    return {"type": "mc", "query": f"Question: {str(field(row, 'question')).strip()}\nAnswer:",
            "choices": [f" {t}" for t in texts], "gold": gold}


def hellaswag_ctx(row):
    ctx_b = str(row.get("ctx_b", "") or "")
    return f"{str(field(row, 'ctx_a')).strip()} {ctx_b[:1].upper() + ctx_b[1:]}".strip()


def hellaswag_fr(row, rng):
    endings = [str(e) for e in as_list(field(row, "endings"))]
    options = "\n".join(f"{LETTERS[i]}. {e}" for i, e in enumerate(endings))
    gold = int(field(row, "label"))
    return {"type": "gen", "prompt": HELLASWAG_FR.format(ctx=hellaswag_ctx(row), options=options),
            "answers": [LETTERS[gold]], "regex": "([A-D])", "max_new_tokens": 1}


def hellaswag_en(row, rng):
    endings = [str(e).strip() for e in as_list(field(row, "endings"))]
    return {"type": "mc", "query": hellaswag_ctx(row), "choices": [f" {e}" for e in endings],
            "gold": int(field(row, "label"))}


def gpqa(template, answer_word):
    def convert(row, rng):
        correct = str(field(row, "Correct Answer")).strip()
        wrong = [str(field(row, f"Incorrect Answer {i}")).strip() for i in (1, 2, 3)]
        gold = rng.randint(0, 3)
        opts = wrong[:gold] + [correct] + wrong[gold:]
        prompt = template.format(q=str(field(row, "Question")).strip(), a=opts[0], b=opts[1], c=opts[2], d=opts[3])
        return {"type": "gen", "prompt": prompt, "answers": [LETTERS[gold]],
                "regex": answer_word + r"\s*:\s*\$?\(?([A-D])", "max_new_tokens": 2048}
    return convert


def math500(template):
    def convert(row, rng):
        return {"type": "gen", "prompt": template.format(q=str(field(row, "problem", "question")).strip()),
                "answers": [str(field(row, "answer")).strip()], "regex": BOXED, "max_new_tokens": 2048}
    return convert


def ifeval_kwargs(kw):
    """One instruction's kwargs as plain JSON: parquet gives every kwarg of the schema, absent ones as
    None or NaN, lists as arrays, integers as floats."""
    out = {}
    for k, v in (kw or {}).items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if v is None or (isinstance(v, float) and v != v):
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    return out


def ifeval(max_new_tokens):
    def convert(row, rng):
        ids = [str(i) for i in as_list(field(row, "instruction_id_list"))]
        kwargs = as_list(field(row, "kwargs"))
        if len(kwargs) != len(ids):
            sys.exit(f"ifeval row {row.get('key')}: {len(ids)} instructions but {len(kwargs)} kwargs")
        return {"type": "ifeval", "prompt": str(field(row, "prompt")), "instruction_id_list": ids,
                "kwargs": [ifeval_kwargs(k) for k in kwargs], "max_new_tokens": max_new_tokens}
    return convert


CONVERTERS = {
    "mmlu_fr": mmlu_fr, "mmlu_en": mmlu_en, "arc_challenge_fr": arc, "arc_challenge_en": arc,
    "hellaswag_fr": hellaswag_fr, "hellaswag_en": hellaswag_en,
    "gpqa_diamond_fr": gpqa(GPQA_FR, "Réponse"), "gpqa_diamond_en": gpqa(GPQA_EN, "Answer"),
    "math_500_fr": math500(MATH_FR), "math_500_en": math500(MATH_EN),
    "ifeval_fr": ifeval(1024), "ifeval_en": ifeval(1280),
}

# Table rows: (label, task name without language, metric).
ROWS = [("ifeval", "ifeval", "prompt_level_strict_acc"), ("gpqa-diamond", "gpqa_diamond", "em"), ("mmlu", "mmlu", "acc"),
        ("math-500", "math_500", "qem"), ("arc-chall", "arc_challenge", "acc_norm_nospace")]
HELLASWAG_METRIC = {"fr": "em", "en": "acc_norm"}


def table(models, lang):
    results = []
    for spec in models:
        name, _, path = spec.partition("=")
        if not path:
            sys.exit(f"--model {spec}: expected NAME=RESULTS.json")
        with open(path, encoding="utf-8") as f:
            results.append((name, json.load(f).get("tasks", {})))
    out = []
    for lg in (["fr", "en"] if lang == "both" else [lang]):
        out.append("| Benchmark | " + " | ".join(n for n, _ in results) + " |")
        out.append("|---|" + "---:|" * len(results))
        for label, task, metric in ROWS + [("hellaswag", "hellaswag", HELLASWAG_METRIC[lg])]:
            cells = []
            for _, tasks in results:
                v = tasks.get(f"{task}_{lg}", {}).get("metrics", {}).get(metric)
                cells.append("—" if v is None else f"{100 * v:.2f}")
            out.append(f"| {label}-{lg} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="dataset files -> task JSONL")
    c.add_argument("bench", choices=sorted(CONVERTERS))
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=1234, help="GPQA answer positions")
    c.add_argument("--limit", type=int, default=0)
    t = sub.add_parser("table", help="results JSON files -> Markdown table in the paper's layout")
    t.add_argument("--model", action="append", required=True, help="NAME=RESULTS.json, in column order")
    t.add_argument("--lang", choices=["fr", "en", "both"], default="both")
    a = ap.parse_args()
    if a.cmd == "table":
        print(table(a.model, a.lang))
        return
    rows = read_rows(a.inputs)
    if a.limit:
        rows = rows[:a.limit]
    rng = random.Random(a.seed)
    with open(a.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(CONVERTERS[a.bench](row, rng), ensure_ascii=False) + "\n")
    print(f"{a.out}: {len(rows)} items", file=sys.stderr)


if __name__ == "__main__":
    main()
