#!/usr/bin/env python3
"""Real data of the Luth demo (experiments/luth/demo-small.yaml) from Debian packages.

French instruction data: the question/answer pairs of the French Debian FAQ (debian-faq-fr),
every --heldout-every-th pair held out (never trained on). Evaluation tasks (luthier lm eval
JSONL, models/lm_eval.h), all on text the model is never trained on:

  faq-mc-fr    held-out French FAQ questions; choose the right answer among 4 held-out answers
               (the other 3 are answers to other held-out questions), chat prompt, acc_norm
  faq-ppl-fr   perplexity of the held-out French pairs ("Question : ...\\nRéponse : ...")
  manpages-ppl-fr  perplexity of excerpts of French man pages (manpages-fr; general French)
  faq-mc-en    the same multiple choice on the English Debian FAQ (debian-faq)
  faq-ppl-en   perplexity of English FAQ pairs
  faq-ifeval-fr / faq-ifeval-en  held-out FAQ questions followed by one verifiable instruction
               (IFEval's ids and kwargs: word limit, no comma, title, end phrase, bullet list,
               quotation), scored by IFEval's checkers; the instruction wording is ours

English FAQ pairs are never trained on (the training data is French only); the same every-K-th
rule picks them so that both languages cover the same FAQ sections.

usage: python3 scripts/prepare_luth_demo.py [--out data/luth-demo] [--max-words 80]
           [--heldout-every 4] [--manpages data/fr-manpages.txt] [--seed 7]
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_fr_faq import pairs  # noqa: E402

FAQ = "/usr/share/doc/debian/FAQ/debian-faq.{}.txt.gz"


def cut(text, max_words):
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"{len(rows):4d} items -> {path}")


def mc_items(held, max_words, rng):
    """Question -> its answer among 4 held-out answers, gold at a seeded position."""
    items = []
    for i, (_, q, a) in enumerate(held):
        others = [h[2] for j, h in enumerate(held) if j != i]
        choices = [cut(x, max_words) for x in rng.sample(others, 3)]
        gold = rng.randrange(4)
        choices.insert(gold, cut(a, max_words))
        items.append({"type": "mc", "query": q, "choices": choices, "gold": gold})
    return items


def ppl_items(held, max_words, q_label, a_label):
    return [{"type": "ppl", "text": f"{q_label} {q}\n{a_label} {cut(a, max_words)}"} for _, q, a in held]


# (instruction id, kwargs, French wording, English wording), cycled over the questions.
INSTRUCTIONS = [
    ("length_constraints:number_words", {"relation": "less than", "num_words": 40},
     "Réponds en moins de 40 mots.", "Answer in fewer than 40 words."),
    ("punctuation:no_comma", {},
     "N'utilise aucune virgule dans ta réponse.", "Do not use any commas in your response."),
    ("detectable_format:title", {},
     "Donne à ta réponse un titre entre doubles chevrons, comme <<titre>>.",
     "Give your answer a title wrapped in double angular brackets, such as <<title>>."),
    ("startend:end_checker", {"end_phrase": "Bonne journée !"},
     "Termine ta réponse par la phrase exacte « Bonne journée ! », sans rien après.",
     None),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "Réponds avec exactement 3 puces Markdown, comme :\n* premier point\n* deuxième point",
     "Answer with exactly 3 Markdown bullet points, such as:\n* first point\n* second point"),
    ("startend:quotation", {},
     "Mets toute ta réponse entre guillemets doubles (\").",
     "Wrap your entire response with double quotation marks."),
]


def ifeval_items(held, lang, n, max_new_tokens):
    items = []
    for i, (_, q, _) in enumerate(held[:n]):
        iid, kwargs, fr, en = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        if lang == "en" and iid == "startend:end_checker":
            kwargs, en = {"end_phrase": "Is there anything else I can help with?"}, \
                "Finish your response with this exact phrase: Is there anything else I can help with?"
        items.append({"type": "ifeval", "prompt": f"{q} {fr if lang == 'fr' else en}", "instruction_id_list": [iid],
                      "kwargs": [kwargs], "max_new_tokens": max_new_tokens})
    return items


def manpage_items(path, n, chars):
    """n excerpts of about `chars` characters, evenly spaced, cut at line boundaries."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    items = []
    for k in range(n):
        start = text.find("\n", (k * len(text)) // n) + 1
        end = text.rfind("\n", start, start + chars)
        chunk = " ".join(line.strip() for line in text[start:end].splitlines() if line.strip())
        if chunk:
            items.append({"type": "ppl", "text": chunk})
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/luth-demo")
    ap.add_argument("--max-words", type=int, default=80, help="cut training answers and ppl texts (words)")
    ap.add_argument("--mc-words", type=int, default=30, help="cut multiple-choice answers (words)")
    ap.add_argument("--heldout-every", type=int, default=4)
    ap.add_argument("--manpages", default="data/fr-manpages.txt", help="rendered French man pages (scripts/prepare_fr_text.sh)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--ifeval-items", type=int, default=8, help="instruction-following prompts per language")
    ap.add_argument("--ifeval-tokens", type=int, default=64, help="their generation bound (tokens)")
    a = ap.parse_args()
    for lang, pkg in (("fr", "debian-faq-fr"), ("en", "debian-faq")):
        if not os.path.exists(FAQ.format(lang)):
            sys.exit(f"prepare_luth_demo: {FAQ.format(lang)} is missing: apt-get install {pkg}")
    os.makedirs(os.path.join(a.out, "tasks"), exist_ok=True)
    rng = random.Random(a.seed)

    fr = list(pairs(FAQ.format("fr")))
    en = list(pairs(FAQ.format("en")))
    k = a.heldout_every
    fr_held = [p for i, p in enumerate(fr) if (i + 1) % k == 0]
    fr_train = [p for i, p in enumerate(fr) if (i + 1) % k != 0]
    en_held = [p for i, p in enumerate(en) if (i + 1) % k == 0]
    train = [{"id": pid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": cut(ans, a.max_words)}]}
             for pid, q, ans in fr_train]
    write_jsonl(os.path.join(a.out, "train.jsonl"), train)
    tasks = os.path.join(a.out, "tasks")
    write_jsonl(os.path.join(tasks, "faq-mc-fr.jsonl"), mc_items(fr_held, a.mc_words, rng))
    write_jsonl(os.path.join(tasks, "faq-ppl-fr.jsonl"), ppl_items(fr_held, a.max_words, "Question :", "Réponse :"))
    write_jsonl(os.path.join(tasks, "faq-mc-en.jsonl"), mc_items(en_held, a.mc_words, rng))
    write_jsonl(os.path.join(tasks, "faq-ppl-en.jsonl"), ppl_items(en_held, a.max_words, "Question:", "Answer:"))
    write_jsonl(os.path.join(tasks, "faq-ifeval-fr.jsonl"), ifeval_items(fr_held, "fr", a.ifeval_items, a.ifeval_tokens))
    write_jsonl(os.path.join(tasks, "faq-ifeval-en.jsonl"), ifeval_items(en_held, "en", a.ifeval_items, a.ifeval_tokens))
    if os.path.exists(a.manpages):
        write_jsonl(os.path.join(tasks, "manpages-ppl-fr.jsonl"), manpage_items(a.manpages, 8, 1500))
    else:
        print(f"prepare_luth_demo: {a.manpages} is absent (scripts/prepare_fr_text.sh): no manpages-ppl-fr task")
    print(f"French FAQ: {len(fr_train)} training pairs, {len(fr_held)} held out; English FAQ: {len(en_held)} evaluation pairs")


if __name__ == "__main__":
    main()
