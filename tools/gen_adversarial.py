#!/usr/bin/env python3
"""Generates the adversarial safetensors corpus and the fuzzer seeds.

    python3 tools/gen_adversarial.py            # writes test/data/adversarial/ and fuzz/seeds/
    python3 tools/gen_adversarial.py --check    # fails if the committed files are out of date

Each case is a hand-built file that breaks exactly one rule of the format (or is a valid edge case
that must load). test/data/adversarial/MANIFEST.tsv lists, per file, the substring the loader's
error must contain ("OK" for files that must load); test/cpp/test_hardening.cpp checks every row.
The output is deterministic: no randomness, no torch, no timestamps. The big scale cases (sparse
files past 4 GiB, 100,000 tensors, a 100 MB header) are not here: the C++ test builds them in a
temporary directory.
"""

import argparse
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DIR = os.path.join(ROOT, "test", "data", "adversarial")
# Seeds of fuzz_open beyond the corpus: the fuzzers read the corpus folders themselves
# (.ci/hardening.sh), so fuzz/ holds no copies of them.
SEEDS_DIR = os.path.join(ROOT, "fuzz", "seeds")
# Sharded checkpoint indexes: one folder with a few small shards and one index per case (also
# fuzz_index's seeds).
INDEX_CORPUS_DIR = os.path.join(ROOT, "test", "data", "adversarial_index")

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1

DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}


def le64(n):
    return struct.pack("<Q", n)


def pad8(header: bytes) -> bytes:
    """Pads with spaces to a multiple of 8, as the reference writer does."""
    return header + b" " * (-len(header) % 8)


def jdump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build(header, data=b"", length=None, pad=True) -> bytes:
    """A file: u64 LE length, header (dict → compact JSON, or raw bytes/str as is), data."""
    if isinstance(header, dict):
        header = jdump(header)
    elif isinstance(header, str):
        header = header.encode("utf-8")
    if pad:
        header = pad8(header)
    return le64(len(header) if length is None else length) + header + data


def t(dtype, shape, begin, end, **extra):
    entry = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
    entry.update(extra)
    return entry


def data_bytes(n, seed=0):
    """Deterministic, non-constant filler bytes."""
    return bytes((i * 37 + seed * 11 + 5) & 0xFF for i in range(n))


# A valid two-tensor file: F32 [2, 2] at [0, 16), I64 [2] at [16, 32).
BASIC = {"a": t("F32", [2, 2], 0, 16), "b": t("I64", [2], 16, 32)}
BASIC_DATA = data_bytes(32)
BASIC_FILE = build(BASIC, BASIC_DATA)


def one(dtype="F32", shape=(1,), begin=0, end=4, **extra):
    """A header with one tensor 'x'."""
    return {"x": t(dtype, list(shape), begin, end, **extra)}


def raw_one(entry_json: str) -> str:
    return '{"x":' + entry_json + "}"


def cases():
    """(name, bytes, expected error substring or 'OK')."""
    out = []

    def add(name, blob, expected):
        out.append((name, blob, expected))

    # ---- valid edge cases: must load ----
    add("valid_basic", BASIC_FILE, "OK")
    add("valid_empty_header", build({}), "OK")
    add("valid_metadata_only", build({"__metadata__": {"format": "pt", "k": "v"}}), "OK")
    add("valid_metadata_null", build({"__metadata__": None, **one()}, data_bytes(4)), "OK")
    add("valid_extra_fields_ignored",
        build({"x": t("F32", [1], 0, 4, extra=[1, {"a": None}], more="yes")}, data_bytes(4)),
        "OK")
    add("valid_scalar", build(one("F64", (), 0, 8), data_bytes(8)), "OK")
    add("valid_zero_sized",
        build({"e": t("F32", [0, 3], 0, 0), "f": t("I8", [2, 0, 5], 0, 0),
               "g": t("U8", [3], 0, 3)}, data_bytes(3)), "OK")
    add("valid_unaligned",
        build({"u": t("U8", [3], 0, 3), "f": t("F32", [2], 3, 11), "d": t("F64", [1], 11, 19)},
              data_bytes(19)), "OK")
    # Every dtype once, laid out in header order.
    header, offset = {}, 0
    for name, bits in DTYPE_BITS.items():
        count = {4: 2, 6: 4}.get(bits, 3)
        nbytes = count * bits // 8
        header["t_" + name] = t(name, [count], offset, offset + nbytes)
        offset += nbytes
    add("valid_all_dtypes", build(header, data_bytes(offset)), "OK")
    add("valid_unicode_names",
        build({"caf\u00e9.\u6f22\u5b57": t("U8", [1], 0, 1), 'q"uo\\te': t("U8", [1], 1, 2),
               "": t("U8", [1], 2, 3)}, data_bytes(3)), "OK")
    add("valid_reversed_header_order",
        build({"second": t("U8", [2], 2, 4), "first": t("U8", [2], 0, 2)}, data_bytes(4)), "OK")
    add("valid_long_padding", build(jdump(one()) + b" " * 4000, data_bytes(4)), "OK")
    add("valid_huge_dims_zero_count",
        build(one("F32", (0, I64_MAX), 0, 0)), "OK")

    # ---- the 8-byte length prefix ----
    add("empty_file", b"", "too small to hold the 8-byte header length")
    add("seven_bytes", b"\x08\x00\x00\x00\x00\x00\x00", "too small to hold the 8-byte header length")
    add("length_zero", le64(0), "not valid JSON")
    add("length_beyond_file", le64(64) + b"{}      ", "exceeds the file")
    add("length_u64_max", le64(U64_MAX) + b"{}      ", "exceeds the limit")
    add("length_2pow63", le64(2**63) + b"{}      ", "exceeds the limit")
    add("length_limit_plus_one", le64(100_000_001) + b"{}      ", "exceeds the limit")
    add("length_at_limit_file_short", le64(100_000_000) + b"{}      ", "exceeds the file")
    add("length_big_endian", struct.pack(">Q", 8) + b"{}      ", "exceeds the limit")
    add("truncated_in_header", BASIC_FILE[: 8 + 20], "exceeds the file")
    add("truncated_in_data", BASIC_FILE[:-5], "extend beyond the data section")
    add("truncated_no_data", BASIC_FILE[: len(BASIC_FILE) - len(BASIC_DATA)],
        "extend beyond the data section")

    # ---- the JSON text ----
    add("json_garbage", build(b"hello world"), "not valid JSON")
    add("json_truncated", build(b'{"x":{"dtype":"F32","shape":[1]'), "not valid JSON")
    add("json_trailing_comma", build(b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},}',
                                     data_bytes(4)), "not valid JSON")
    # NUL padding (some writers pad so): refused naming the cause; convert repairs it.
    nul_padded = "not valid JSON: it is padded with NUL bytes"
    add("json_nul_padding", build(jdump(one()) + b"\x00" * 4, data_bytes(4), pad=False),
        nul_padded)
    add("json_nul_and_space_padding",
        build(jdump(one()) + b" \x00\x00\n", data_bytes(4), pad=False), nul_padded)
    add("json_nul_before_the_end",
        build(b'{"x":{"dtype":"F32","shape":[1],\x00"data_offsets":[0,4]}}', data_bytes(4)),
        "not valid JSON")
    add("json_only_nul", build(b"\x00" * 8, pad=False), "not valid JSON")
    add("json_bom", build(b"\xef\xbb\xbf" + jdump(one()), data_bytes(4)), "not valid JSON")
    add("json_nan_dim", build(raw_one('{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}'),
                              data_bytes(4)), "not valid JSON")
    add("json_infinity_offset",
        build(raw_one('{"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}'), data_bytes(4)),
        "not valid JSON")
    add("json_single_quotes", build(b"{'x':{}}"), "not valid JSON")
    add("json_raw_control_char",
        build(b'{"x\x01":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data_bytes(1)),
        "not valid JSON")
    # Control characters, escaped as JSON requires: loaded, as the reference does (our save
    # refuses to write them; verify reports them).
    add("name_escaped_nul", build(raw_one('{"dtype":"U8","shape":[1],"data_offsets":[0,1]}')
                                  .replace('"x"', '"a\\u0000b"'), data_bytes(1)), "OK")
    add("names_escaped_controls",
        build('{"\\u0001\\u001f":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
              '"\\u007f\\u0085\\u009f":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
              data_bytes(2)), "OK")
    add("metadata_escaped_controls",
        build({"__metadata__": {"k\x00": "v\x01\x1b[31m"}, **one("U8", (1,), 0, 1)},
              data_bytes(1)), "OK")
    add("name_escaped___metadata__twice",
        build('{"__metadata__":{},"\\u005f_metadata__":{}}'), "__metadata__ appears twice")
    add("non_utf8_name",
        build(b'{"x\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data_bytes(1)),
        "not valid JSON")
    add("non_utf8_overlong",
        build(b'{"\xc0\xaf":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data_bytes(1)),
        "not valid JSON")
    add("non_utf8_surrogate",
        build(b'{"\xed\xa0\x80":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', data_bytes(1)),
        "not valid JSON")
    add("non_utf8_metadata_value",
        build(b'{"__metadata__":{"k":"v\xfe"}}'), "not valid JSON")
    # Headers around 100,000 bytes, a size other tools mishandle: unpadded and padded.
    def sized(json_size, padding=b""):
        head = b'{"__metadata__":{"p":"'
        tail = b'"},' + jdump(one("U8", (1,), 0, 1))[1:]
        body = head + b"p" * (json_size - len(head) - len(tail)) + tail
        assert len(body) == json_size
        return build(body + padding, data_bytes(1), pad=False)
    add("boundary_json_99999_unpadded", sized(99_999), "OK")
    add("boundary_json_100001_unpadded", sized(100_001), "OK")
    add("boundary_json_100001_padded_100008", sized(100_001, b" " * 7), "OK")
    add("boundary_json_99999_nul_padded_100000", sized(99_999, b"\x00"), nul_padded)
    add("deep_nesting_header", build(b"[" * 100_000 + b"]" * 100_000), "not valid JSON")
    add("deep_nesting_extra_field",
        build(b'{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"deep":'
              + b"[" * 20_000 + b"]" * 20_000 + b"}}", data_bytes(1)), "not valid JSON")
    add("huge_number_digits",
        build(raw_one('{"dtype":"U8","shape":[' + "9" * 5000 + '],"data_offsets":[0,1]}'),
              data_bytes(1)), "not valid JSON")
    add("huge_number_exponent",
        build(raw_one('{"dtype":"U8","shape":[1],"data_offsets":[0,1e400]}'), data_bytes(1)),
        "not valid JSON")

    # ---- header structure ----
    add("header_array", build(b"[]"), "must be a JSON object")
    add("header_string", build(b'"x"'), "must be a JSON object")
    add("header_number", build(b"42"), "must be a JSON object")
    add("header_null", build(b"null"), "must be a JSON object")
    add("tensor_not_object", build({"x": 1}), "expected an object with dtype")
    add("tensor_array", build({"x": ["F32", [1], [0, 4]]}, data_bytes(4)),
        "expected an object with dtype")
    add("tensor_null", build({"x": None}), "expected an object with dtype")
    add("missing_dtype", build({"x": {"shape": [1], "data_offsets": [0, 4]}}, data_bytes(4)),
        "missing 'dtype'")
    add("missing_shape", build({"x": {"dtype": "F32", "data_offsets": [0, 4]}}, data_bytes(4)),
        "missing 'shape'")
    add("missing_data_offsets", build({"x": {"dtype": "F32", "shape": [1]}}, data_bytes(4)),
        "missing 'data_offsets'")
    add("duplicate_tensor",
        build('{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
              '"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', data_bytes(2)),
        "appears twice")
    add("duplicate_field_dtype",
        build(raw_one('{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}'),
              data_bytes(1)), "'dtype' appears twice")
    add("duplicate_field_offsets",
        build(raw_one('{"dtype":"U8","shape":[1],"data_offsets":[0,1],"data_offsets":[0,1]}'),
              data_bytes(1)), "'data_offsets' appears twice")

    # ---- __metadata__ ----
    add("metadata_string", build({"__metadata__": "x"}), "__metadata__ must be an object")
    add("metadata_array", build({"__metadata__": ["a", "b"]}), "__metadata__ must be an object")
    add("metadata_int_value", build({"__metadata__": {"k": 1}}), "must have a string value")
    add("metadata_null_value", build({"__metadata__": {"k": None}}), "must have a string value")
    add("metadata_nested", build({"__metadata__": {"k": {"a": "b"}}}), "must have a string value")
    add("metadata_duplicate_key", build(b'{"__metadata__":{"k":"a","k":"b"}}'), "twice")
    add("metadata_twice", build(b'{"__metadata__":{},"__metadata__":{}}'),
        "__metadata__ appears twice")

    # ---- dtype ----
    add("dtype_unknown", build(one("F33"), data_bytes(4)), "unknown dtype 'F33'")
    add("dtype_lowercase", build(one("f32"), data_bytes(4)), "unknown dtype 'f32'")
    add("dtype_empty", build(one(""), data_bytes(4)), "unknown dtype ''")
    add("dtype_number", build({"x": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}},
                              data_bytes(4)), "dtype must be a string")

    # ---- shape ----
    add("shape_not_array", build({"x": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}},
                                 data_bytes(4)), "shape must be an array")
    add("shape_negative", build(one("F32", (-1,), 0, 4), data_bytes(4)),
        "must be a non-negative integer, found -1")
    add("shape_negative_zero_total", build(one("F32", (0, -3), 0, 0)),
        "must be a non-negative integer, found -3")
    add("shape_float", build(raw_one('{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}'),
                             data_bytes(4)), "found a floating-point number")
    add("shape_exponent", build(raw_one('{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}'),
                                data_bytes(1)), "found a floating-point number")
    add("shape_string_dim", build(one("F32", ("1",), 0, 4), data_bytes(4)),
        "must be a non-negative integer, found a string")
    add("shape_nested", build(one("F32", ([1],), 0, 4), data_bytes(4)),
        "must be a non-negative integer, found an array")
    add("shape_bool_dim", build(one("U8", (True,), 0, 1), data_bytes(1)),
        "must be a non-negative integer, found a boolean")
    add("shape_dim_u64_max", build(one("U8", (U64_MAX,), 0, 1), data_bytes(1)), "too large")
    add("shape_dim_2pow63", build(one("U8", (2**63,), 0, 1), data_bytes(1)), "too large")
    add("shape_dim_2pow64", build(one("U8", (2**64,), 0, 1), data_bytes(1)), "not valid JSON")
    # Products that wrap around 2^64 to exactly the stored size must not be believed.
    add("shape_product_wraps_to_zero", build(one("U8", (2**32, 2**32), 0, 0)),
        "more elements than 64-bit sizes can count")
    add("shape_product_wraps_to_four", build(one("U8", (2**62 + 1, 4), 0, 4), data_bytes(4)),
        "more elements than 64-bit sizes can count")
    add("shape_product_above_i64", build(one("U8", (2**62, 2), 0, 0)),
        "more elements than 64-bit sizes can count")
    add("shape_bits_wrap_to_zero", build(one("F64", (2**61,), 0, 0)),
        "more bits than 64-bit sizes can count")
    add("shape_bits_wrap_to_eight", build(one("F64", (2**61 + 1,), 0, 8), data_bytes(8)),
        "more bits than 64-bit sizes can count")
    # Zero elements, so the format is satisfied, but torch's contiguous strides (products of the
    # trailing sizes) overflow: found by fuzz_open; must be a named error, not torch's bare one.
    add("zero_count_stride_overflow", build(one("I8", (0, 99999999, 2**61), 0, 0)),
        "strides overflow")
    add("f4_odd_count", build(one("F4", (3,), 0, 2), data_bytes(2)), "not a whole number of bytes")
    add("f6_count_not_multiple_of_4", build(one("F6_E2M3", (6,), 0, 5), data_bytes(5)),
        "not a whole number of bytes")
    add("nbytes_too_few", build(one("F32", (2,), 0, 4), data_bytes(4)), "need 8 bytes")
    add("nbytes_too_many", build(one("F32", (1,), 0, 8), data_bytes(8)), "need 4 bytes")
    add("nbytes_f4_half", build(one("F4", (4,), 0, 4), data_bytes(4)), "need 2 bytes")

    # ---- data_offsets ----
    add("offsets_not_array", build({"x": {"dtype": "U8", "shape": [1], "data_offsets": 0}},
                                   data_bytes(1)), "data_offsets must be an array of two")
    add("offsets_one_element", build({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0]}},
                                     data_bytes(1)), "data_offsets must be an array of two")
    add("offsets_three_elements",
        build({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, data_bytes(1)),
        "data_offsets must be an array of two")
    add("offsets_negative", build(one("U8", (1,), -1, 0), data_bytes(1)),
        "data_offsets[0] must be a non-negative integer, found -1")
    add("offsets_float", build(raw_one('{"dtype":"U8","shape":[1],"data_offsets":[0,1.0]}'),
                               data_bytes(1)), "data_offsets[1] must be a non-negative integer")
    add("offsets_string", build(one("U8", (1,), "0", 1), data_bytes(1)),
        "data_offsets[0] must be a non-negative integer, found a string")
    add("offsets_reversed", build(one("U8", (0,), 1, 0), data_bytes(1)), "start after they end")
    add("offsets_beyond_data", build(one("F32", (2,), 0, 8), data_bytes(4)),
        "extend beyond the data section")
    add("offsets_u64_max", build(one("U8", (1,), U64_MAX - 1, U64_MAX), data_bytes(1)),
        "extend beyond the data section")
    add("offsets_u64_max_empty", build(one("U8", (0,), U64_MAX, U64_MAX)),
        "extend beyond the data section")
    add("offsets_past_4gib", build(one("U8", (4,), 2**32, 2**32 + 4), data_bytes(4)),
        "extend beyond the data section")
    add("offsets_overlap",
        build({"a": t("U8", [8], 0, 8), "b": t("U8", [8], 4, 12)}, data_bytes(12)), "overlap")
    add("offsets_same_range",
        build({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 0, 4)}, data_bytes(4)), "overlap")
    add("offsets_contained",
        build({"a": t("U8", [8], 0, 8), "b": t("U8", [2], 2, 4)}, data_bytes(8)), "overlap")
    add("offsets_gap",
        build({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 8, 12)}, data_bytes(12)), "gap of 4")
    add("offsets_gap_at_start", build(one("U8", (4,), 4, 8), data_bytes(8)),
        "at the start of the data section")
    add("trailing_data", build(one("U8", (4,), 0, 4), data_bytes(9)), "trailing bytes")
    add("trailing_data_no_tensors", build({}, data_bytes(3)), "trailing bytes")
    # Found by fuzz_open (an early JSON reader): a float in a shape and a scalar data_offsets.
    add("fuzz_float_shape_scalar_offsets",
        build('{"xnot valid JSON":{"dtype":"U8","shape":[1e3],"data_offsets":0}}'),
        "shape[0] must be a non-negative integer, found a floating-point number")
    return out


def extra_seeds():
    """fuzz_open's seeds beyond the corpus (which it reads too): valid files of varied shapes."""
    out = []
    out.append(("seed_metadata_and_tensors",
                build({"__metadata__": {"format": "pt"}, "w": t("BF16", [2, 3], 0, 12),
                       "b": t("BF16", [3], 12, 18), "i": t("I32", [1, 1, 2], 18, 26)},
                      data_bytes(26))))
    out.append(("seed_packed", build({"p": t("F4", [2, 4], 0, 4),
                                      "q": t("F6_E3M2", [2, 4], 4, 10)}, data_bytes(10))))
    out.append(("seed_many", build({"t%d" % i: t("U8", [1], i, i + 1) for i in range(64)},
                                   data_bytes(64))))
    # BOOL bytes other than 0 and 1 must come back as stored (found by fuzz_open: torch's copies
    # turn them into 1).
    out.append(("seed_bool_bytes", build({"b": t("BOOL", [3], 0, 3)}, b"\x05*O")))
    # An optimizer's file (optim.h): the fuzzer restores it into Adam and LBFGS optimizers over two
    # parameters of 4 and 2 floats, so that mutations reach the optimizer metadata's reader.
    groups = ('[{"params":[0,1],"lr":0.001,"betas":[0.9,0.999],"eps":1e-08,'
              '"weight_decay":0,"amsgrad":false}]')
    out.append(("seed_optimizer_adam", build(
        {"__metadata__": {"optimizer": "Adam", "param_groups": groups,
                          "state": '{"0":{"step":3},"1":{"step":3}}'},
         "state.0.exp_avg": t("F32", [4], 0, 16), "state.0.exp_avg_sq": t("F32", [4], 16, 32),
         "state.1.exp_avg": t("F32", [2], 32, 40), "state.1.exp_avg_sq": t("F32", [2], 40, 48)},
        data_bytes(48))))
    return out


def index_shards():
    """The shards every index case refers to: a {x, y}, b {z}, sub/c {w}, bx {x, z}."""
    def shard(names):
        header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
        for name in names:
            header[name] = t("F32", [2], offset, offset + 8)
            data += struct.pack("<2f", len(name), offset)
            offset += 8
        return build(header, data)
    return [("a.safetensors", shard(["x", "y"])), ("b.safetensors", shard(["z"])),
            ("sub/c.safetensors", shard(["w"])), ("bx.safetensors", shard(["x", "z"]))]


def index_cases():
    """(name, index text, expected error substring or OK), for Checkpoint(<name>.index.json)
    followed by tensors(): every rule of the index and of its shards."""
    out = []

    def add(name, index, expected):
        if isinstance(index, dict):
            index = json.dumps(index, indent=2)
        out.append((name, index.encode("utf-8") if isinstance(index, str) else index, expected))

    good = {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}
    add("ok_basic", {"metadata": {"total_size": 24}, "weight_map": good}, "OK")
    add("ok_subdir", {"weight_map": {**good, "w": "sub/c.safetensors"}}, "OK")
    add("ok_metadata_any_json", {"metadata": {"total_size": "24", "n": [1, {"a": None}]},
                                 "weight_map": good, "extra_member": 1}, "OK")
    add("ok_empty", {"weight_map": {}}, "OK")
    add("missing_shard", {"weight_map": {**good, "z": "nope.safetensors"}},
        "shard 'nope.safetensors' of tensor 'z'")
    add("listed_not_held", {"weight_map": {**good, "w": "b.safetensors"}},
        "the index lists tensor 'w' in shard 'b.safetensors', which does not hold it")
    add("held_not_listed", {"weight_map": {"x": "a.safetensors", "z": "b.safetensors"}},
        "shard 'a.safetensors' holds tensor 'y', which the index does not list")
    add("held_by_two_shards", {"weight_map": {**good, "z": "bx.safetensors"}},
        "holds tensor 'x', which the index assigns to shard 'a.safetensors'")
    add("listed_twice", '{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}',
        "tensor 'x' is listed twice in weight_map")
    add("escape_dotdot", {"weight_map": {**good, "z": "../b.safetensors"}},
        "has a '..' component")
    add("escape_dotdot_inner", {"weight_map": {**good, "z": "sub/../../b.safetensors"}},
        "has a '..' component")
    add("escape_absolute", {"weight_map": {**good, "z": "/etc/b.safetensors"}},
        "is not a relative path")
    add("escape_backslash", {"weight_map": {**good, "z": "..\\b.safetensors"}},
        "is not a relative path")
    add("escape_drive", {"weight_map": {**good, "z": "C:b.safetensors"}},
        "is not a relative path")
    add("shard_not_safetensors", {"weight_map": {**good, "z": "b.bin"}},
        "is not a '.safetensors' file")
    add("shard_directory", {"weight_map": {**good, "z": "sub/"}}, "is not a '.safetensors' file")
    add("shard_empty_name", {"weight_map": {**good, "z": ""}}, "empty shard file")
    add("shard_nul", '{"weight_map": {"z": "b\\u0000.safetensors"}}', "NUL character")
    add("not_json", "weight_map: x", "index is not valid JSON")
    add("truncated", json.dumps({"weight_map": good})[:-3], "index is not valid JSON")
    add("not_object", "[]", "index must be a JSON object, found an array")
    add("no_weight_map", {"metadata": {}}, "index has no 'weight_map' object")
    add("weight_map_array", {"weight_map": ["x"]}, "'weight_map' must be an object, found an array")
    add("weight_map_null", {"weight_map": None}, "'weight_map' must be an object, found null")
    add("value_number", {"weight_map": {"x": 1}},
        "weight_map entry 'x' must be a shard file name (a string), found a number")
    add("value_object", {"weight_map": {"x": {"file": "a.safetensors"}}},
        "must be a shard file name (a string), found an object")
    add("metadata_string", {"metadata": "m", "weight_map": good},
        "'metadata' must be an object, found a string")
    add("two_weight_maps", '{"weight_map": {}, "weight_map": {}}', "two 'weight_map' members")
    add("not_utf8", b'{"weight_map": {"\xff": "a.safetensors"}}', "index is not valid UTF-8")
    return out



# ---- torch.save checkpoints for the converter (convert/): hand-built zips and pickles ----
# test/data/adversarial_convert/<case>.pt, with a MANIFEST.tsv as above; test/cpp/test_convert.cpp
# checks every row through load_torch_checkpoint, and test/python/test_cli.py compares the "OK"
# ones with torch.load. Zips are laid out as torch.save lays them out ("archive/" records, stored,
# data descriptors, zip64 end records) unless a case says otherwise; deflate streams are built by
# hand (stored blocks) so the bytes never depend on zlib's version.
CHECKPOINT_CORPUS_DIR = os.path.join(ROOT, "test", "data", "adversarial_checkpoints")
CONVERT_CORPUS_DIR = os.path.join(ROOT, "test", "data", "adversarial_convert")
PICKLE_SEEDS_DIR = os.path.join(ROOT, "fuzz", "seeds_pickle")


def le16(n):
    return struct.pack("<H", n)


def le32(n):
    return struct.pack("<I", n)


def crc32(data):
    import zlib
    return zlib.crc32(data) & 0xFFFFFFFF


def deflate_stored(data):
    """A raw deflate stream of stored blocks (what any inflater accepts, no zlib involved)."""
    out, at = b"", 0
    while True:
        block = data[at:at + 65535]
        at += len(block)
        final = at >= len(data)
        out += bytes([1 if final else 0]) + le16(len(block)) + le16(len(block) ^ 0xFFFF) + block
        if final:
            return out


class Record:
    """One zip entry; every field can be made to lie (None: the truth)."""

    def __init__(self, name, data, method=0, compressed=None, **lies):
        self.name, self.data, self.method = name, data, method
        self.compressed = compressed if compressed is not None else (
            deflate_stored(data) if method == 8 else data)
        self.lies = lies


def zip_archive(records, descriptor=True, zip64=False, comment=b"", eocd=None, extra_tail=b"",
                lead=b""):
    """A zip in torch.save's layout. Per record, lies= overrides what a header says:
    local_/central_ + method, crc, csize, size, flags, name, offset; descriptor_crc; and
    central_zip64 / local_zip64 (tuples of 64-bit values for a zip64 extra field)."""
    body, central = lead, b""
    for r in records:
        lie = r.lies
        name = r.name.encode("utf-8")
        flags = (0x08 if descriptor else 0) | 0x800
        crc, csize, size = crc32(r.data), len(r.compressed), len(r.data)
        offset = len(body)

        def field(prefix, key, truth):
            return lie.get(prefix + key, truth)

        local_extra = b""
        if "local_zip64" in lie:
            values = lie["local_zip64"]
            local_extra = le16(1) + le16(8 * len(values)) + b"".join(le64(v) for v in values)
        l_crc, l_csize, l_size = (0, 0, 0) if descriptor else (crc, csize, size)
        local = (le32(0x04034B50) + le16(20) + le16(field("local_", "flags", flags)) +
                 le16(field("local_", "method", r.method)) + le16(0) + le16(0) +
                 le32(field("local_", "crc", l_crc)) + le32(field("local_", "csize", l_csize)) +
                 le32(field("local_", "size", l_size)))
        local_name = field("local_", "name", name)
        # torch.save pads with an 'FB' extra field so that data starts on a 64-byte boundary.
        pad = -(offset + len(local) + 4 + len(local_name) + len(local_extra) + 4) % 64
        local_extra += b"FB" + le16(pad) + b"Z" * pad
        body += local + le16(len(local_name)) + le16(len(local_extra)) + local_name + local_extra
        body += r.compressed
        if descriptor:
            body += le32(0x08074B50) + le32(lie.get("descriptor_crc", crc)) + le32(csize) + le32(size)
        central_extra = b""
        if "central_zip64" in lie:
            values = lie["central_zip64"]
            central_extra = le16(1) + le16(8 * len(values)) + b"".join(le64(v) for v in values)
        c_name = field("central_", "name", name)
        central += (le32(0x02014B50) + le16(0x031E) + le16(20) +
                    le16(field("central_", "flags", flags)) +
                    le16(field("central_", "method", r.method)) + le16(0) + le16(0) +
                    le32(field("central_", "crc", crc)) + le32(field("central_", "csize", csize)) +
                    le32(field("central_", "size", size)) + le16(len(c_name)) +
                    le16(len(central_extra)) + le16(0) + le16(0) + le16(0) + le32(0) +
                    le32(field("central_", "offset", offset)) + c_name + central_extra)
    cd_offset, cd_size, count = len(body), len(central), len(records)
    e = dict(count=count, cd_size=cd_size, cd_offset=cd_offset)
    e.update(eocd or {})
    out = body + central
    if zip64:
        record_offset = len(out)
        out += (le32(0x06064B50) + le64(44) + le16(0x031E) + le16(45) + le32(0) + le32(0) +
                le64(e.get("zip64_count", e["count"])) + le64(e.get("zip64_count", e["count"])) +
                le64(e.get("zip64_cd_size", e["cd_size"])) +
                le64(e.get("zip64_cd_offset", e["cd_offset"])))
        out += le32(0x07064B50) + le32(0) + le64(record_offset) + le32(1)
    out += extra_tail
    out += (le32(0x06054B50) + le16(0) + le16(0) + le16(min(e["count"], 0xFFFF)) +
            le16(min(e["count"], 0xFFFF)) + le32(min(e["cd_size"], 0xFFFFFFFF)) +
            le32(min(e["cd_offset"], 0xFFFFFFFF)) + le16(len(comment)) + comment)
    return out


# Pickle opcodes (protocol 2), as torch.save writes them.
def pk_str(text):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return b"X" + le32(len(data)) + data


def pk_int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + le16(value)
    return b"\x8a\x08" + struct.pack("<q", value)


def pk_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def pk_ints(values):
    return b"(" + b"".join(pk_int(v) for v in values) + b"t"


def pk_dict(items):
    """{key: value, ...} from (key, pickled value) pairs."""
    return b"}(" + b"".join(pk_str(k) + v for k, v in items) + b"u"


def pk_storage(storage_type, key, numel):
    return (b"(" + pk_str("storage") + pk_global("torch", storage_type) + pk_str(key) +
            pk_str("cpu") + pk_int(numel) + b"tQ")


HOOKS = pk_global("collections", "OrderedDict") + b")R"


def pk_tensor(storage, offset, size, stride, requires_grad=b"\x89", hooks=HOOKS, metadata=None,
              dtype=None):
    """_rebuild_tensor_v2 (or _v3 with `dtype`) of (storage, offset, size, stride, ...)."""
    function = "_rebuild_tensor_v3" if dtype else "_rebuild_tensor_v2"
    args = storage + pk_int(offset) + pk_ints(size) + pk_ints(stride) + requires_grad + hooks
    if dtype:
        args += pk_global("torch", dtype)
    if metadata is not None:
        args += metadata
    return pk_global("torch._utils", function) + b"(" + args + b"tR"


def pk_program(body):
    return b"\x80\x02" + body + b"."


def checkpoint(pickle_bytes, storages=(), extra=(), **archive):
    """A torch.save-shaped archive: data.pkl, byteorder, data/<key> records, version."""
    records = [Record("archive/data.pkl", pickle_bytes), Record("archive/byteorder", b"little")]
    records += [Record("archive/data/" + key, data) for key, data in storages]
    records += [Record("archive/version", b"3\n")]
    records += list(extra)
    return zip_archive(records, **archive)


F32_6 = struct.pack("<6f", 0.5, -1.5, 2.25, 0.0, -0.0, 3.0)
W_PICKLE = pk_program(pk_dict([("w", pk_tensor(pk_storage("FloatStorage", "0", 6), 0, [2, 3],
                                               [3, 1]))]))


def convert_cases():
    """(name, bytes, expected error substring or OK) for load_torch_checkpoint(<name>.pt)."""
    out = []

    def add(name, blob, expected):
        out.append((name, blob, expected))

    def records(pickle_bytes=W_PICKLE, storage=F32_6, **lies):
        """data.pkl, byteorder, the storage (with lies), version."""
        return [Record("archive/data.pkl", pickle_bytes), Record("archive/byteorder", b"little"),
                Record("archive/data/0", storage, **lies), Record("archive/version", b"3\n")]

    # ---- valid: must load (test_cli.py compares each with torch.load) ----
    add("ok_basic", checkpoint(W_PICKLE, [("0", F32_6)]), "OK")
    add("ok_no_descriptor", checkpoint(W_PICKLE, [("0", F32_6)], descriptor=False), "OK")
    add("ok_zip64_end_record", checkpoint(W_PICKLE, [("0", F32_6)], zip64=True), "OK")
    add("ok_deflated", zip_archive([Record("archive/data.pkl", W_PICKLE, method=8),
                                    Record("archive/byteorder", b"little", method=8),
                                    Record("archive/data/0", F32_6, method=8),
                                    Record("archive/version", b"3\n", method=8)]), "OK")
    add("ok_zip64_extra_fields", zip_archive(records(
        central_csize=0xFFFFFFFF, central_size=0xFFFFFFFF, central_zip64=(24, 24),
        local_csize=0xFFFFFFFF, local_size=0xFFFFFFFF, local_zip64=(24, 24)), descriptor=False),
        "OK")
    neg = pk_dict([("neg", b"\x88")])
    add("ok_neg_view", checkpoint(pk_program(pk_dict([("w", pk_tensor(
        pk_storage("FloatStorage", "0", 6), 0, [2, 3], [3, 1], metadata=neg))])), [("0", F32_6)]),
        "OK")
    c64 = struct.pack("<6f", 1.0, 2.0, -3.0, 0.5, 0.0, -0.0)
    add("ok_conj_view", checkpoint(pk_program(pk_dict([("z", pk_tensor(
        pk_storage("ComplexFloatStorage", "0", 3), 0, [3], [1],
        metadata=pk_dict([("conj", b"\x88")])))])), [("0", c64)]), "OK")
    add("ok_metadata_none", checkpoint(pk_program(pk_dict([("w", pk_tensor(
        pk_storage("FloatStorage", "0", 6), 0, [6], [1], metadata=b"N"))])), [("0", F32_6)]),
        "OK")
    # transformers' position_ids: arange(n).expand((1, -1)), a stride-0 dim of size 1.
    add("ok_expanded_size_one", checkpoint(pk_program(pk_dict([("ids", pk_tensor(
        pk_storage("LongStorage", "0", 3), 0, [1, 3], [0, 1]))])),
        [("0", struct.pack("<3q", 0, 1, 2))]), "OK")
    add("ok_parameter", checkpoint(pk_program(pk_dict([("p", pk_global(
        "torch._utils", "_rebuild_parameter") + b"(" + pk_tensor(
        pk_storage("FloatStorage", "0", 6), 0, [6], [1]) + b"\x88" + HOOKS + b"tR")])),
        [("0", F32_6)]), "OK")

    # ---- the zip: the central directory is the one truth ----
    add("zip_local_method_stored_central_deflate", zip_archive(records(
        method=8, local_method=0)), "the local header says compression method 0, the central "
        "directory says 8")
    add("zip_local_method_deflate_central_stored", zip_archive(records(local_method=8)),
        "the local header says compression method 8, the central directory says 0")
    add("zip_local_size_disagrees", zip_archive(records(local_size=20, local_csize=20),
                                                descriptor=False),
        "zip entry 'archive/data/0': the local header says CRC")
    add("zip_local_crc_disagrees", zip_archive(records(local_crc=1234), descriptor=False),
        "the local header says CRC 1234")
    add("zip_local_sizes_with_descriptor_disagree", zip_archive(records(local_size=20)),
        "the local header says CRC 0, 0 compressed bytes and 20 bytes")
    add("zip_local_name_disagrees", zip_archive(records(local_name=b"archive/data/9")),
        "the local header names it 'archive/data/9'")
    add("zip_local_flags_disagree", zip_archive(records(local_flags=0x800)),
        "the local header's flags 0x800 disagree with the central directory's 0x808")
    add("zip_encrypted", zip_archive(records(local_flags=0x809, central_flags=0x809)),
        "zip entry 'archive/data/0' is encrypted")
    add("zip_method_bzip2", zip_archive(records(local_method=12, central_method=12)),
        "uses compression method 12")
    add("zip_stored_sizes_differ", zip_archive(records(central_csize=23)),
        "is stored uncompressed but its compressed size 23 differs from its size 24")
    add("zip_descriptor_disagrees", zip_archive(records(descriptor_crc=99)),
        "zip entry 'archive/data/0': its data descriptor")
    add("zip_data_past_archive", zip_archive(records(central_csize=1 << 20, central_size=1 << 20)),
        "bytes of data at offset")
    add("zip_overlapping_entries", zip_archive(records(
        central_csize=60, central_size=60, local_csize=60, local_size=60), descriptor=False),
        "overlaps zip entry 'archive/version'")
    add("zip_two_entries_one_header", zip_archive(records() + [Record(
        "archive/data/1", F32_6, central_offset=0)]),
        "zip entry 'archive/data.pkl' (offset 0 to 221) overlaps zip entry 'archive/data/1'")
    add("zip_duplicate_name", zip_archive(records() + [Record("archive/data/0", F32_6)]),
        "zip entry 'archive/data/0' is in the central directory twice")
    add("zip_zip64_marker_without_value", zip_archive(records(central_csize=0xFFFFFFFF)),
        "marks a field as zip64 (0xffffffff) but has no zip64 value for it")
    add("zip_zip64_extra_disagrees", zip_archive(records(
        central_csize=0xFFFFFFFF, central_size=0xFFFFFFFF, central_zip64=(24, 24),
        local_csize=0xFFFFFFFF, local_size=0xFFFFFFFF, local_zip64=(1 << 33, 1 << 33)),
        descriptor=False), "the local header says CRC")
    add("zip_zip64_huge_storage", zip_archive(records(
        central_csize=0xFFFFFFFF, central_size=0xFFFFFFFF, central_zip64=(1 << 40, 1 << 40),
        local_csize=0xFFFFFFFF, local_size=0xFFFFFFFF, local_zip64=(1 << 40, 1 << 40)),
        descriptor=False), "bytes of data at offset")
    add("zip_central_directory_size_wrong", checkpoint(W_PICKLE, [("0", F32_6)],
                                                       eocd={"cd_size": 100}),
        "does not end where the end record begins")
    add("zip_count_marker_without_zip64", checkpoint(W_PICKLE, [("0", F32_6)],
                                                     eocd={"count": 0xFFFF}),
        "no zip64 locator precedes it")
    add("zip_zip64_claims_many_entries", checkpoint(W_PICKLE, [("0", F32_6)], zip64=True,
                                                    eocd={"count": 0xFFFF,
                                                          "zip64_count": 1 << 40}),
        "the archive claims 1099511627776 entries")
    add("zip_zip64_disagrees_with_end_record", checkpoint(W_PICKLE, [("0", F32_6)], zip64=True,
                                                          eocd={"zip64_cd_offset": 3}),
        "the end record says central directory offset")
    add("zip_no_entries", zip_archive([], lead=b"PK\x03\x04" + b"J" * 60),
        "the zip archive is empty")
    add("zip_no_end_record", checkpoint(W_PICKLE, [("0", F32_6)])[:-10],
        "no end-of-central-directory record")
    add("zip_local_header_missing", zip_archive(
        [Record("archive/data.pkl", W_PICKLE, central_offset=8)] + records()[1:],
        lead=b"PK\x03\x04" + b"J" * 60),
        "zip entry 'archive/data.pkl': no local header at offset 8")
    add("zip_local_header_past_the_data", zip_archive(records(central_offset=1 << 31)),
        "zip entry 'archive/data/0': its local header (offset 2147483648) lies past the data")
    add("zip_deflate_bomb_storage", zip_archive(records(
        method=8, compressed=b"\x00" * 64, central_size=1 << 31, central_csize=64)),
        "claims 2147483648 bytes from 64 compressed bytes, which no deflate stream does")
    add("zip_storage_crc_wrong", zip_archive(records(method=8, central_crc=7, local_crc=7),
                                             descriptor=False),
        "zip entry 'archive/data/0': CRC mismatch")
    add("zip_deflate_stream_short", zip_archive(records(
        method=8, compressed=deflate_stored(F32_6[:20]))),
        "its deflate stream does not inflate to the 24 bytes")

    # ---- records read whole: bounded before anything is allocated, never quoted in full ----
    def claimed(name, size, compressed):
        """A deflated record claiming `size` bytes from `compressed` bytes of junk (refused before
        any inflating)."""
        return Record(name, b"", method=8, compressed=b"\x00" * compressed, central_size=size,
                      local_size=size, central_crc=0, local_crc=0)
    add("record_pickle_too_large", zip_archive([claimed("archive/data.pkl", 40 << 20, 65536)],
                                               descriptor=False),
        "zip entry 'archive/data.pkl' is 41943040 bytes once inflated, more than the 33554432 "
        "bytes data.pkl may have")
    add("record_pickle_compression_bomb", zip_archive([claimed("archive/data.pkl", 4 << 20, 4096)],
                                                      descriptor=False),
        "inflates 4096 bytes to 4194304, more than the 64 times a record read whole may")
    add("record_byteorder_big", checkpoint(W_PICKLE, [("0", F32_6)], extra=()).replace(
        b"little", b"big\x00\x00\x00"), "CRC mismatch")
    add("record_byteorder_huge", zip_archive([
        Record("archive/data.pkl", W_PICKLE),
        Record("archive/byteorder", b"x" * 65)]),
        "zip entry 'archive/byteorder' is 65 bytes once inflated, more than the 64 bytes a "
        "byteorder record may have")
    add("record_byteorder_quoted_short", zip_archive([
        Record("archive/data.pkl", W_PICKLE), Record("archive/byteorder", b"B" * 60)]),
        "written in 'BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB'... byte order")
    add("record_version_unsupported", zip_archive([
        Record("archive/data.pkl", W_PICKLE), Record("archive/version", b"99\n")]),
        "the archive's version record says '99', expected a format version from 1 to 10")
    add("record_version_huge", zip_archive([
        Record("archive/data.pkl", W_PICKLE), Record("archive/.data/version", b"3" * 100)]),
        "more than the 64 bytes a version record may have")
    add("record_no_pickle", zip_archive([Record("archive/byteorder", b"little")]),
        "the archive has no data.pkl")

    # ---- the unpickler: bounded, and one value exactly at STOP ----
    add("pickle_leftover_value", checkpoint(b"\x80\x02N" + W_PICKLE[2:], [("0", F32_6)]),
        "the program leaves 1 more value(s) and 0 mark(s) on the stack")
    add("pickle_leftover_mark", checkpoint(b"\x80\x02(" + W_PICKLE[2:], [("0", F32_6)]),
        "leaves 0 more value(s) and 1 mark(s) on the stack")
    add("pickle_bytes_after_stop", checkpoint(W_PICKLE + b"N.", [("0", F32_6)]),
        "2 bytes follow STOP")
    add("pickle_mark_flood", checkpoint(b"\x80\x02" + b"(" * 1100 + b".", []),
        "more than 1024 MARKs are open")
    add("pickle_string_too_long", checkpoint(b"\x80\x02\x8d" + le64(1 << 40) + b".", []),
        "a string of 1099511627776 bytes, more than the 65536")
    # Floods of cheap opcodes (NONE, '}0', MEMOIZE) are built in memory by test_convert.cpp
    # (Unpickler.CheapOpcodesCostBoundedMemory) and, compressed, by test_cli.py under RLIMIT_AS.

    # ---- rebuild arguments: honoured or refused by name, never dropped ----
    def one_tensor(**kwargs):
        storage = pk_storage(kwargs.pop("storage_type", "FloatStorage"), "0",
                             kwargs.pop("numel", 6))
        return checkpoint(pk_program(pk_dict([("w", pk_tensor(storage, 0, kwargs.pop("size", [6]),
                                                              kwargs.pop("stride", [1]),
                                                              **kwargs))])),
                          [("0", F32_6)])
    add("rebuild_metadata_unknown_key", one_tensor(metadata=pk_dict([("sparse", b"\x88")])),
        "_rebuild_tensor_v2's metadata has the key the string 'sparse', which this converter "
        "does not know how to honour")
    add("rebuild_metadata_not_bool", one_tensor(metadata=pk_dict([("neg", pk_int(1))])),
        "_rebuild_tensor_v2's metadata 'neg' is the int 1, expected True")
    # torch.load negates whatever the value: False has no one meaning.
    add("rebuild_metadata_false", one_tensor(metadata=pk_dict([("neg", b"\x89")])),
        "_rebuild_tensor_v2's metadata 'neg' is False, expected True (torch.save writes only "
        "True")
    add("rebuild_metadata_not_dict", one_tensor(metadata=pk_int(1)),
        "expects its metadata to be a dict, found the int 1")
    add("rebuild_conj_real", one_tensor(metadata=pk_dict([("conj", b"\x88")])),
        "marks a Float tensor as conjugated")
    add("rebuild_v3_metadata_unknown_key", one_tensor(
        storage_type="UntypedStorage", numel=24, size=[24], dtype="uint8",
        metadata=pk_dict([("python_dispatch", b"\x88")])),
        "_rebuild_tensor_v3's metadata has the key the string 'python_dispatch'")
    add("rebuild_hooks_not_empty", one_tensor(hooks=pk_dict([("h", pk_int(1))])),
        "expects the backward hooks to be an empty OrderedDict")
    add("rebuild_requires_grad_not_bool", one_tensor(requires_grad=pk_int(2)),
        "expects requires_grad to be a bool, found the int 2")
    add("rebuild_parameter_with_state", checkpoint(pk_program(pk_dict([("p", pk_global(
        "torch._utils", "_rebuild_parameter_with_state") + b"(" + pk_tensor(
        pk_storage("FloatStorage", "0", 6), 0, [6], [1]) + b"\x88" + HOOKS +
        pk_dict([("tp_dim", pk_int(0))]) + b"tR")])), [("0", F32_6)]),
        "the parameter has Python attributes (the string 'tp_dim')")
    add("rebuild_neg_bool", checkpoint(pk_program(pk_dict([("b", pk_tensor(
        pk_storage("BoolStorage", "0", 2), 0, [2], [1],
        metadata=pk_dict([("neg", b"\x88")])))])), [("0", b"\x01\x00")]),
        "tensor 'b' is saved negated")

    # ---- views that would multiply the storage's bytes ----
    add("view_expand_stride_zero", checkpoint(pk_program(pk_dict([("w", pk_tensor(
        pk_storage("FloatStorage", "0", 1), 0, [8192, 8192], [0, 0]))])),
        [("0", F32_6[:4])]),
        "tensor 'w' is a view of size [8192, 8192] and stride [0, 0] naming 268435456 bytes of a "
        "storage of 4 bytes")
    add("view_overlapping", checkpoint(pk_program(pk_dict([("w", pk_tensor(
        pk_storage("FloatStorage", "0", 6), 0, [3, 4], [1, 1]))])), [("0", F32_6)]),
        "naming 48 bytes of a storage of 24 bytes")
    add("view_expand_under_neg", checkpoint(pk_program(pk_dict([("w", pk_tensor(
        pk_storage("FloatStorage", "0", 1), 0, [4096, 4096], [0, 0],
        metadata=neg))])), [("0", F32_6[:4])]), "tensor 'w' is a view of size [4096, 4096]")

    # ---- issue 26: inert placeholders (globals outside the allow-list), read without strict;
    # EXTRACTS: must be read (test_convert.cpp reads placeholder_* cases so) ----
    w_tensor = pk_tensor(pk_storage("FloatStorage", "0", 6), 0, [6], [1])

    def obj(cls, state_items):
        """cls() by NEWOBJ, its state {key: value} by BUILD (TorchScript's and protocol 2's)."""
        return pk_global("m", cls) + b")\x81" + pk_dict(state_items) + b"b"

    def placeholder(name, body, expected):
        add("placeholder_" + name, checkpoint(pk_program(body), [("0", F32_6)]), expected)

    placeholder("cycle", pk_global("m", "C") + b")\x81q\x00" +
                pk_dict([("w", w_tensor), ("me", b"h\x00")]) + b"b", "EXTRACTS")
    deep = b""
    for _ in range(100):
        deep += pk_global("m", "C") + b")\x81}" + pk_str("a")
    placeholder("nested_deep", deep + w_tensor + b"sb" * 100,
                "is nested more than 64 containers deep")
    placeholder("newobj_allowed_global", pk_global("torch", "Size") + b")\x81",
                "instantiates the global torch.Size")
    placeholder("reduce_args_not_tuple", pk_global("os", "system") + pk_str("x") + b"R",
                "expected a tuple of arguments for os.system, found the string 'x'")
    placeholder("build_on_list", b"]" + pk_dict([]) + b"b", "sets the state of a list")
    placeholder("tensor_in_args", pk_dict([("x", pk_global("functools", "partial") + b"(" +
                                                 pk_global("os", "system") + w_tensor + b"tR")]),
                "EXTRACTS")
    placeholder("state_and_slots", pk_global("m", "S") + b")\x81N" +
                pk_dict([("w", w_tensor)]) + b"\x86b", "EXTRACTS")
    placeholder("long_qualified_name", pk_dict([("w", w_tensor), (
        "x", b"c" + b"m" * 60000 + b"\nC\n)\x81")]), "EXTRACTS")
    placeholder("attribute_and_key_collide", pk_dict([("a.b", w_tensor), (
        "a", obj("C", [("b", w_tensor)]))]), "two tensors are named 'a.b'")
    placeholder("new_opcodes", pk_dict([("w", w_tensor), ("b", b"C\x03abc"), (
        "s", b"\x8f(K\x01K\x02\x90"), ("f", b"(K\x01\x91"), (
        "x", pk_global("m", "K") + b")}\x92")]), "EXTRACTS")
    placeholder("bytes_too_large", b"\x8e" + le64(1 << 40), "a bytes value of 1099511627776 bytes")
    out += legacy_convert_cases()
    return out


# The legacy (pre-1.6, non-zip) torch.save layout (convert/legacy_format.h): the pickled magic
# number, protocol version and system info, the object, the storage key list, then per key an
# 8-byte element count and the bytes.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."


def pk_legacy_storage(storage_type, key, numel, view=b"N", location="cpu"):
    """A legacy persistent id: ('storage', type, root key, location, numel, view metadata)."""
    return (b"(" + pk_str("storage") + pk_global("torch", storage_type) + pk_str(key) +
            pk_str(location) + pk_int(numel) + view + b"tQ")


def legacy_checkpoint(object_pickle, keys=("0",), records=((6, F32_6),), version=1001,
                      little_endian=b"\x88", magic=LEGACY_MAGIC, key_list=None, tail=b""):
    sys_info = pk_dict([("protocol_version", pk_int(1001)), ("little_endian", little_endian),
                        ("type_sizes", pk_dict([("short", pk_int(2)), ("int", pk_int(4)),
                                                ("long", pk_int(4))]))])
    if key_list is None:
        key_list = pk_program(b"](" + b"".join(pk_str(k) for k in keys) + b"e")
    out = magic + pk_program(pk_int(version)) + pk_program(sys_info) + object_pickle + key_list
    for count, data in records:
        out += struct.pack("<q", count) + data
    return out + tail


def legacy_convert_cases():
    """The legacy format's cases: its framing, the key list against the persistent ids, the
    records against the file, and storage views (torch before 1.0)."""
    out = []

    def add(name, blob, expected):
        out.append(("legacy_" + name, blob, expected))

    def one_tensor(storage_id, size=(2, 3), stride=(3, 1), offset=0):
        return pk_program(pk_dict([("w", pk_tensor(storage_id, offset, list(size),
                                                   list(stride)))]))

    w = one_tensor(pk_legacy_storage("FloatStorage", "0", 6))
    add("ok_basic", legacy_checkpoint(w), "OK")
    # A view (key, offset, numel) of the root: elements 1 to 4, beside the root itself.
    view = b"(" + pk_str("v") + pk_int(1) + pk_int(4) + b"t"
    add("ok_storage_view", legacy_checkpoint(pk_program(pk_dict([
        ("v", pk_tensor(pk_legacy_storage("FloatStorage", "0", 6, view=view), 1, [3], [1])),
        ("w", pk_tensor(pk_legacy_storage("FloatStorage", "0", 6), 0, [6], [1]))]))), "OK")
    # Two storages, each record's count in its own dtype's elements.
    add("ok_two_storages", legacy_checkpoint(pk_program(pk_dict([
        ("a", pk_tensor(pk_legacy_storage("HalfStorage", "1", 3), 0, [3], [1])),
        ("w", pk_tensor(pk_legacy_storage("FloatStorage", "0", 6), 0, [2, 3], [3, 1]))])),
        keys=("0", "1"), records=((6, F32_6), (3, b"\x00\x3c\x00\xc0\x00\x00"))), "OK")

    # ---- framing ----
    add("magic_wrong", legacy_checkpoint(w, magic=LEGACY_MAGIC.replace(b"\x19.", b"\x18.")),
        "a pickle stream, but not a torch.save file: the legacy format starts with its magic "
        "number 0x1950a86a20f9469cfc6c")
    add("version_wrong", legacy_checkpoint(w, version=1000),
        "the legacy format's protocol version is the int 1000, expected the int 1001")
    add("big_endian", legacy_checkpoint(w, little_endian=b"\x89"),
        "says little_endian is False: the storages are in a big-endian machine's byte order")
    add("truncated_pickle", legacy_checkpoint(w[:40], key_list=b"", records=()),
        "pickle truncated")

    # ---- the key list against the persistent ids ----
    add("key_unnamed", legacy_checkpoint(w, keys=("0", "7"), records=((6, F32_6), (0, b""))),
        "the storage key list names storage '7', which the pickled object does not name")
    add("key_twice", legacy_checkpoint(w, keys=("0", "0"), records=((6, F32_6), (6, F32_6))),
        "the storage key list names storage '0' twice")
    add("key_missing", legacy_checkpoint(w, keys=(), records=()),
        "storage '0' is named by the pickled object but missing from the storage key list (0 "
        "keys): the file has no data for it")
    add("keys_not_a_list", legacy_checkpoint(w, key_list=pk_program(pk_dict([("0", pk_int(1))]))),
        "the legacy format's storage key list is a dict, expected a list of strings")
    add("keys_not_strings", legacy_checkpoint(w, key_list=pk_program(b"](" + pk_int(0) + b"e")),
        "the legacy format's storage key list is a list of 1 holding a non-string, expected a "
        "list of strings")
    add("zip_persistent_id", legacy_checkpoint(one_tensor(pk_storage("FloatStorage", "0", 6))),
        "expected a persistent id ('storage', type, key, location, numel, view), found a tuple "
        "of 5")
    add("untyped_storage", legacy_checkpoint(one_tensor(
        pk_legacy_storage("UntypedStorage", "0", 24), size=[24], stride=[1])),
        "the legacy format names torch.UntypedStorage, whose dtype it does not record")

    # ---- the records against the file: memory bounded by what the file holds ----
    add("count_wrong", legacy_checkpoint(w, records=((5, F32_6),)),
        "storage '0': the file counts 5 elements at offset")
    add("count_negative", legacy_checkpoint(w, records=((-1, F32_6),)),
        "storage '0': the file counts -1 elements at offset")
    add("storage_truncated", legacy_checkpoint(w, records=((6, F32_6[:20]),)),
        "truncated: storage '0' needs 24 bytes at offset")
    add("count_truncated", legacy_checkpoint(w, records=()) + b"\x06\x00",
        "truncated: storage '0''s element count at offset")
    add("numel_huge", legacy_checkpoint(one_tensor(
        pk_legacy_storage("FloatStorage", "0", 1 << 60)), records=((1 << 60, F32_6),)),
        "storage '0' claims 4611686018427387904 bytes (1152921504606846976 Float elements), more "
        "than the file's")
    add("bytes_after_storages", legacy_checkpoint(w, tail=b"\x00" * 5),
        "5 bytes follow the last storage")

    # ---- storage views: inside their root, one key one slice ----
    def viewed(view_key, offset, numel, key="0"):
        return b"(" + pk_str(view_key) + pk_int(offset) + pk_int(numel) + b"t"
    add("view_past_root", legacy_checkpoint(one_tensor(
        pk_legacy_storage("FloatStorage", "0", 6, view=viewed("v", 4, 4)), size=[4], stride=[1])),
        "storage view 'v' covers elements 4 to 4 + 4 of storage '0', which has 6 Float elements")
    add("view_key_is_root", legacy_checkpoint(one_tensor(
        pk_legacy_storage("FloatStorage", "0", 6, view=viewed("0", 0, 2)), size=[2], stride=[1])),
        "storage view key '0' is also the key of a storage")
    add("view_twice_different", legacy_checkpoint(pk_program(pk_dict([
        ("a", pk_tensor(pk_legacy_storage("FloatStorage", "0", 6, view=viewed("v", 0, 2)), 0,
                        [2], [1])),
        ("b", pk_tensor(pk_legacy_storage("FloatStorage", "0", 6, view=viewed("v", 2, 2)), 0,
                        [2], [1]))]))),
        "storage view 'v' is named twice, as different slices")
    add("view_metadata_not_tuple", legacy_checkpoint(one_tensor(
        pk_legacy_storage("FloatStorage", "0", 6, view=pk_int(3)))),
        "expected storage '0''s view metadata to be None or (view key, offset, numel), found the "
        "int 3")
    add("view_tensor_past_view", legacy_checkpoint(one_tensor(
        pk_legacy_storage("FloatStorage", "0", 6, view=viewed("v", 2, 2)), size=[3], stride=[1])),
        "reaches element 2 of a storage of 2 Float elements")
    return out


def pickle_seeds(corpus):
    """fuzz_unpickle seeds: the data.pkl of every convert case that has one, and a few floods. The
    cases' whole archives are seeds too: the fuzzer reads test/data/adversarial_convert itself."""
    import io
    import zipfile
    out = []
    for name, blob, _ in corpus:
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as archive:
                data = archive.read("archive/data.pkl")
        except Exception:  # cases whose zip (or its data.pkl) is the point
            continue
        if data and len(data) <= 64 * 1024:  # the fuzzer runs with -max_len=65536
            out.append(("convert_" + name, data))
    # Small floods of the cheap opcodes the budget and the limits bound, for mutations to grow.
    out.append(("flood_none", b"\x80\x02" + b"N" * 4000 + b"."))
    out.append(("flood_dicts", b"\x80\x02" + b"}0" * 2000 + b"}."))
    out.append(("flood_memo", b"\x80\x02}" + b"\x94" * 4000 + b"."))
    out.append(("flood_marks", b"\x80\x02" + b"(" * 1000 + b"}."))
    return out

def checkpoint_cases():
    """(name, {file: bytes}, expected error substring or OK) for a folder per case: quantized
    checkpoints (quant.describe / DenseView of <name>/model.safetensors, config.json beside it)
    and DCP save_distributed layouts (StorageReader(<name>).read_metadata()). The issue-22 classes
    beyond the header: 0-dim quantized weights, integers out of range, foreign metadata values,
    chunks that do not tile a tensor exactly once."""
    out = []

    def add(name, files, expected):
        out.append((name, files, expected))

    def f32(n, seed=0):
        return data_bytes(4 * n, seed)

    def file_of(tensors, metadata=None):
        """tensors: [(name, dtype, shape, bytes)] in order."""
        header, data = {}, b""
        if metadata is not None:
            header["__metadata__"] = metadata
        for name, dtype, shape, blob in tensors:
            header[name] = t(dtype, list(shape), len(data), len(data) + len(blob))
            data += blob
        return build(header, data)

    # ---- quant ----
    fp8_scalar = [("x.weight", "F8_E4M3", [], b"\x40"), ("x.weight_scale", "F32", [], f32(1))]
    add("quant_zero_dim_fp8_one_scale", {"model.safetensors": file_of(fp8_scalar)}, "OK")
    add("quant_zero_dim_fp8_scale_inv",
        {"model.safetensors": file_of([fp8_scalar[0], ("x.weight_scale_inv", "F32", [], f32(1))])},
        "OK")
    add("quant_zero_dim_fp8_many_scales",
        {"model.safetensors": file_of([fp8_scalar[0], ("x.weight_scale", "F32", [3], f32(3))])},
        "expected one value")
    # GPTQ, 4 bits, in 64, out 16, groups of 32
    gptq = [("a.g_idx", "I32", [64], data_bytes(256, 1)), ("a.qweight", "I32", [8, 16], data_bytes(512, 2)),
            ("a.qzeros", "I32", [2, 2], data_bytes(16, 3)), ("a.scales", "F16", [2, 16], data_bytes(64, 4))]
    for name, config, expected in [
        ("quant_gptq_bits_2pow32_plus_4", {"quant_method": "gptq", "bits": 4294967300, "group_size": 32},
         "'bits' must be an integer in [1, 8], found 4294967300"),
        ("quant_gptq_bits_fraction", {"quant_method": "gptq", "bits": 4.5, "group_size": 32},
         "'bits' must be an integer in [1, 8], found 4.5"),
        ("quant_gptq_bits_string", {"quant_method": "gptq", "bits": "4", "group_size": 32},
         "'bits' must be an integer in [1, 8], found a string"),
        ("quant_gptq_group_size_2pow63", {"quant_method": "gptq", "bits": 4,
                                          "group_size": 9223372036854775808},
         "'group_size' must be an integer in [-1, 281474976710656], found 9223372036854775808"),
        ("quant_gptq_sym_string", {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": "true"},
         "'sym' must be true or false"),
        ("quant_awq_w_bit_overflow", {"quant_method": "awq", "w_bit": 4294967300, "q_group_size": 32},
         "'w_bit' must be an integer in [1, 8]"),
    ]:
        add(name, {"model.safetensors": file_of(gptq),
                   "config.json": json.dumps({"quantization_config": config}).encode()}, expected)
    # fracast 0.1.0's own metadata: "quantization" is theirs, not ours; the file is unquantized
    for name, value in [("quant_foreign_key_none", "none"),
                        ("quant_foreign_key_label", "fracast-w8-symmetric-per-output-channel")]:
        add(name, {"model.safetensors": file_of([("w", "F32", [2], f32(2))],
                                                {"format": "pt", "quantization": value})}, "OK")

    # ---- DCP save_distributed layouts: w is [4, 2] F32, stored in chunks ----
    def dcp(chunks):
        """chunks: [(file, offsets, rows)]: rows of w (2 floats each) at offsets."""
        files = {}
        for file, offsets, rows in chunks:
            info = json.dumps({"w": {"saved_offsets": offsets}})
            files[file] = file_of([("w", "F32", [rows, 2], f32(2 * rows, len(files)))],
                                  {"DCP_SHARDING_INFO": info})
        return files
    add("dcp_exact", dcp([("a.safetensors", [0, 0], 2), ("b.safetensors", [2, 0], 2)]), "OK")
    add("dcp_gap", dcp([("a.safetensors", [0, 0], 1), ("b.safetensors", [2, 0], 2)]),
        "tensor 'w': its 2 stored chunks cover 6 of the 8 elements")
    add("dcp_overlap", dcp([("a.safetensors", [0, 0], 3), ("b.safetensors", [2, 0], 2)]),
        "overlaps")
    add("dcp_negative_offset", dcp([("a.safetensors", [-4, 0], 4)]),
        "'saved_offsets' must be an integer in [0, 9223372036854775807], found -4")
    add("dcp_fractional_offset", dcp([("a.safetensors", [3.9, 0], 4)]),
        "'saved_offsets' must be an integer in [0, 9223372036854775807], found 3.9")
    add("dcp_offset_2pow63", dcp([("a.safetensors", [2**63, 0], 4)]),
        "found 9223372036854775808")
    add("dcp_offsets_rank", dcp([("a.safetensors", [0], 4)]),
        "tensor 'w' has 2 dimensions, but its saved_offsets [0] has 1")
    return out


def write_tree(directory, files, check):
    """Writes name→bytes into `directory` (names may hold '/'), removing files it does not list."""
    stale = []
    os.makedirs(directory, exist_ok=True)
    wanted = dict(files)
    existing = sorted(os.path.relpath(os.path.join(root, f), directory)
                      for root, _, names in os.walk(directory) for f in names)
    for name in existing:
        if name not in wanted:
            stale.append(name)
            if not check:
                os.remove(os.path.join(directory, name))
    for name, blob in files:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read() == blob:
                    continue
        stale.append(name)
        if not check:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(blob)
    return stale


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if any generated file differs")
    args = parser.parse_args()

    corpus = cases()
    names = [name for name, _, _ in corpus]
    assert len(names) == len(set(names)), "duplicate case names"
    for name, _, expected in corpus:
        assert "\t" not in expected and "\n" not in expected, name
    manifest = "# file\texpected error substring (OK: must load)\n" + "".join(
        "%s.safetensors\t%s\n" % (name, expected) for name, _, expected in corpus)
    files = [(name + ".safetensors", blob) for name, blob, _ in corpus]
    files.append(("MANIFEST.tsv", manifest.encode("utf-8")))

    index_corpus = index_cases()
    index_manifest = "# index file\texpected error substring (OK: must load)\n" + "".join(
        "%s.index.json\t%s\n" % (name, expected) for name, _, expected in index_corpus)
    index_files = index_shards() + [(n + ".index.json", b) for n, b, _ in index_corpus]
    index_files.append(("MANIFEST.tsv", index_manifest.encode("utf-8")))

    stale = write_tree(CORPUS_DIR, files, args.check)
    stale += write_tree(INDEX_CORPUS_DIR, index_files, args.check)
    stale += write_tree(SEEDS_DIR, [(n + ".safetensors", b) for n, b in extra_seeds()], args.check)
    convert_corpus = convert_cases()
    assert len({n for n, _, _ in convert_corpus}) == len(convert_corpus), "duplicate convert cases"
    convert_manifest = "# torch.save file\texpected error substring (OK: must load)\n" + "".join(
        "%s.pt\t%s\n" % (name, expected) for name, _, expected in convert_corpus)
    convert_files = [(n + ".pt", b) for n, b, _ in convert_corpus]
    convert_files.append(("MANIFEST.tsv", convert_manifest.encode("utf-8")))
    stale += write_tree(CONVERT_CORPUS_DIR, convert_files, args.check)
    checkpoint_corpus = checkpoint_cases()
    assert len({n for n, _, _ in checkpoint_corpus}) == len(checkpoint_corpus), "duplicate cases"
    checkpoint_files = [(name + "/" + file, blob) for name, files, _ in checkpoint_corpus
                        for file, blob in sorted(files.items())]
    checkpoint_files.append(("MANIFEST.tsv", (
        "# folder\texpected error substring (OK: must load)\n" + "".join(
            "%s\t%s\n" % (name, expected) for name, _, expected in checkpoint_corpus)).encode()))
    stale += write_tree(CHECKPOINT_CORPUS_DIR, checkpoint_files, args.check)
    # Only the generated seeds: fuzz/make_pickle_seeds.py writes the others (with torch).
    for name, blob in pickle_seeds(convert_corpus):
        path = os.path.join(PICKLE_SEEDS_DIR, name + ".pkl")
        if not os.path.exists(path) or open(path, "rb").read() != blob:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                with open(path, "wb") as f:
                    f.write(blob)
    bad = sum(1 for _, _, e in corpus if e != "OK")
    if args.check:
        if stale:
            print("out of date: " + ", ".join(stale), file=sys.stderr)
            return 1
        print("up to date: %d cases" % len(corpus))
        return 0
    print("%d cases (%d invalid, %d valid) in %s; %d seeds in %s"
          % (len(corpus), bad, len(corpus) - bad, os.path.relpath(CORPUS_DIR, ROOT),
             len(extra_seeds()), os.path.relpath(SEEDS_DIR, ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
