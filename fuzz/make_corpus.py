#!/usr/bin/env python3
"""Regenerates the fuzz seed corpora (fuzz/corpus/<target>/) and dictionaries (fuzz/dict/<target>.dict).

    fuzz/make_corpus.py [--tokenizers DIR]

Seeds are small real inputs: the tiny model's config.json (from a build folder's models/tiny-olmoe, when
one exists) and the model fixtures' configs, tokenizer.json files (the tiny model's, the sbert fixture's
and, with --tokenizers DIR laid out as tests/fixtures/tokenizers/fetch.sh's DEST, Llama-2's and Qwen3's cut
to their first 400 tokens), configs/*.toml, configs/data/*.jsonl (first lines), and safetensors and
routing-results files written here. Dictionaries hold the key names and literals each reader compares
against, taken from its sources. Python standard library only.
"""
import argparse
import glob
import json
import os
import re
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")


def out_dir(target):
    d = os.path.join(FUZZ, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def write(target_dir, name, data):
    with open(os.path.join(target_dir, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> file bytes, laid out as the safetensors library does."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def seeds_safetensors():
    d = out_dir("safetensors")
    f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
    write(d, "dtypes.safetensors", safetensors([
        ("a.f32", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("b.bf16", "BF16", [4], bytes([0, 0x3f, 0x80, 0x3f, 0, 0x40, 0, 0xc0])),
        ("c.i64", "I64", [2], struct.pack("<2q", -1, 7)), ("d.u8", "U8", [3], b"\x01\x02\x03"), ("e.bool", "BOOL", [2], b"\x00\x01"),
        ("f.f16", "F16", [], b"\x00\x3c"), ("g.empty", "F32", [0, 4], b""), ("h.f64", "F64", [1], struct.pack("<d", 0.5)),
        ("i.i32", "I32", [1, 1], struct.pack("<i", 3)), ("j.i16", "I16", [2], struct.pack("<2h", 1, -1)), ("k.i8", "I8", [1], b"\xff")],
        {"format": "pt"}))
    write(d, "router_checkpoint.safetensors", safetensors(
        [("model.layers.1.mlp.gate.weight", "F32", [4, 2], f32(*range(8))), ("model.layers.1.mlp.gate.base", "F32", [4, 2], f32(*range(8)))],
        {"format": "pt", "target_layers": "1", "model_fingerprint": "0123abcd", "steps": "10"}))
    write(d, "empty.safetensors", safetensors([]))


def seeds_model_config():
    d = out_dir("model_config")
    for f in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/models/*/config.json"))):
        shutil.copy(f, os.path.join(d, os.path.basename(os.path.dirname(f)) + ".json"))
    tiny = sorted(glob.glob(os.path.join(ROOT, "build*/models/tiny-olmoe/config.json")))
    if tiny:
        shutil.copy(tiny[0], os.path.join(d, "tiny_olmoe.json"))


def cut_tokenizer(path, keep):
    """A tokenizer.json with the vocabulary's first `keep` ids, the merges among them and its first added tokens."""
    j = json.load(open(path, encoding="utf-8"))
    model = j["model"]
    vocab = {t: i for t, i in model["vocab"].items() if i < keep}
    merges = []
    for m in model["merges"]:
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    added = [t for t in j.get("added_tokens", []) if t["id"] < keep] or j.get("added_tokens", [])[:3]
    for n, t in enumerate(added):
        if t["id"] >= keep:
            t["id"] = keep + n
    j["added_tokens"] = added
    return json.dumps(j, ensure_ascii=False, separators=(",", ":"))


def seeds_tokenizers(npm_dir):
    d = out_dir("tokenizer_json")
    shutil.copy(os.path.join(ROOT, "framework/model/tiny/tokenizer.json"), os.path.join(d, "gpt_neox_tiny.json"))
    shutil.copy(os.path.join(ROOT, "tests/fixtures/sbert/tokenizer.json"), os.path.join(d, "wordpiece_sbert.json"))
    if npm_dir:
        write(d, "llama2_cut.json", cut_tokenizer(os.path.join(npm_dir, "llama2/tokenizer.json"), 400))
        write(d, "qwen3_cut.json", cut_tokenizer(os.path.join(npm_dir, "qwen3/tokenizer.json"), 400))
    d = out_dir("tokenizer_encode")
    texts = ["Hello world! It's 2024.", "  leading spaces\tand\ttabs\n\nnew lines ", "<|endoftext|>Question: 12 + 6?<|padding|>",
             "caf\u00e9 na\u0131\u0308ve \u65e5\u672c\u8a9e \U0001f642", "e\u0301\u0065\u0301 (not NFC)",
             "def f(x):\n    return x ** 2  # code\n"]
    for n, t in enumerate(texts):
        write(d, f"text{n}.txt", t)
    write(d, "invalid_utf8.txt", b"\xff\xfe invalid \xc3")
    for f in sorted(glob.glob(os.path.join(ROOT, "configs/data/text/*.txt"))):
        write(d, os.path.basename(f), open(f, "rb").read()[:400])


def seeds_routing_results():
    d = out_dir("routing_results")
    entries = {}
    for q in range(3):
        layers = [{"layer": l, "routing_weights": {f"expert_{e}": round(1 / (e + 2 + q + l), 6) for e in range(8)}} for l in (3, 4)]
        entries[f"q{q}"] = {"input_text": f"Question {q}: what is {q} + 1?\nA) {q + 1}\nB) {q}\nAnswer:", "correct_answer": "A",
                            "model_answer": "AB"[q % 2], "is_correct": q % 2 == 0, "choice_letters": ["A", "B"], "set": "train",
                            "last_token_routing": {"token_id": 27, "token_text": ":", "layers": layers}}
    write(d, "three_entries.json", json.dumps(entries, indent=1))
    top_k = {"x": {"input_text": "t", "correct_answer": "B", "is_correct": False,
                   "last_token_routing": {"token_id": 5, "layers": [{"layer": 0, "routing_weights": {"expert_1": 0.6, "expert_6": 0.4}}]}}}
    write(d, "top_k_only.json", json.dumps(top_k))


def seeds_experiment():
    d = out_dir("experiment")
    for f in sorted(glob.glob(os.path.join(ROOT, "configs/*.toml"))):
        shutil.copy(f, d)
    roma = open(os.path.join(ROOT, "configs/roma_last5.toml"), "rb").read()
    write(d, "roma_with_overrides.toml", roma + b"\0train.lr=0.001\0model.path=/models/olmoe\0roma.k=7\0model.dtype=bfloat16\0data.train.limit=3")
    write(d, "extends_itself.toml", b'extends = "experiment.toml"\nstages = []\n')


def seeds_jsonl():
    d = out_dir("jsonl")
    for f in sorted(glob.glob(os.path.join(ROOT, "configs/data/*.jsonl"))):
        lines = open(f, "rb").read().split(b"\n")[:4]
        write(d, os.path.basename(f), b"\n".join(lines) + b"\n")


def literals(patterns):
    """Identifier-like string literals in the sources matched by `patterns`."""
    found = set()
    for pattern in patterns:
        for f in glob.glob(os.path.join(ROOT, pattern), recursive=True):
            for s in re.findall(r'"((?:[^"\\\n]|\\.)*)"', open(f, encoding="utf-8").read()):
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{1,40}", s):
                    found.add(s)
    return found


def json_keys(files):
    keys = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                keys.add(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and len(v) < 40:
            keys.add(v)

    for f in files:
        walk(json.load(open(f, encoding="utf-8")))
    return keys


def write_dict(target, words):
    os.makedirs(os.path.join(FUZZ, "dict"), exist_ok=True)
    with open(os.path.join(FUZZ, "dict", target + ".dict"), "w") as f:
        f.write(f"# libFuzzer dictionary for fuzz_{target}, written by fuzz/make_corpus.py\n")
        for w in sorted(words):
            escaped = "".join(chr(b) if 0x20 <= b < 0x7f and chr(b) not in '"\\' else "\\x%02x" % b for b in w.encode("utf-8"))
            if escaped:
                f.write(f'"{escaped}"\n')


def dictionaries():
    json_tokens = ['{"', '":', "[]", "{}", "null", "true", "false", "-1", "1e308", "18446744073709551616", "0.5", "\\u0000", "\\ud800"]
    write_dict("safetensors", {"dtype", "shape", "data_offsets", "__metadata__", "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
                               "U8", "BOOL", "F8_E4M3", "U64"} | {w.strip('"') for w in json_tokens})
    write_dict("model_config", json_keys(glob.glob(os.path.join(ROOT, "tests/fixtures/models/*/config.json")))
               | literals(["framework/model/*.cpp", "framework/model/*.h", "framework/model/architectures/*.cpp"]) | set(json_tokens))
    write_dict("tokenizer_json", literals(["framework/sdk/tokenizer/*.cpp"]) | set(json_tokens)
               | {"type", "BPE", "WordPiece", "vocab", "merges", "added_tokens", "normalizer", "pre_tokenizer", "decoder", "post_processor",
                  "Regex", "String", "\\p{L}", "(?i:", "\\s+(?!\\S)", "\u2581", "\u0120", "<0x0A>", "##"})
    write_dict("tokenizer_encode", {"<|endoftext|>", "<|padding|>", "\u0301", "\u2581", "\r\n", "'s", "'ll", "\u00e9", "\U0001f642", " \t"})
    write_dict("routing_results", {"input_text", "last_token_routing", "token_id", "token_text", "layers", "layer", "routing_weights",
                                   "expert_", "expert_999999", "correct_answer", "is_correct", "choice_letters", "model_answer", "set"}
               | set(json_tokens))
    toml_tokens = ["[", "]]", "[[", " = ", "\n", '"""', "'''", "1979-05-27T07:32:00Z", "inf", "nan", "0x7fffffffffffffff", "{ a = 1 }", "\0",
                   "extends", "plugin_path", "stages", ".path=", "=true"]
    write_dict("experiment", literals(["framework/host/*.cpp", "framework/sdk/options.cpp", "plugins/*/*.cpp", "experiments/*/*.cpp"])
               | set(toml_tokens))
    write_dict("jsonl", literals(["plugins/jsonl/jsonl.cpp", "framework/sdk/multiple_choice.cpp"]) | set(json_tokens))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizers", help="folder of <name>/tokenizer.json from npm (tests/fixtures/tokenizers/fetch.sh)")
    args = parser.parse_args()
    seeds_safetensors()
    seeds_model_config()
    seeds_tokenizers(args.tokenizers)
    seeds_routing_results()
    seeds_experiment()
    seeds_jsonl()
    dictionaries()


if __name__ == "__main__":
    main()
