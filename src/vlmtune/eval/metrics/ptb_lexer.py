"""The CoreNLP 3.4.1 PTB lexer without a JVM (the rules: eval/metrics/tokenize.py): its DFA tables read from the
class file in pycocoevalcap's jar, run on the text with the token transforms PTBTokenizer's main() applies.
`_ptb_tokenizer_output` is what that program prints for a document. Pure Python; no torch import.
"""

from __future__ import annotations

import array
import functools
import hashlib
import re
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

_LEXER_CLASS = "edu/stanford/nlp/process/PTBLexer.class"
_LEXER_CLASS_SHA256 = "715fdfb3652cc6796f90f28442378a0c71c92b5909f1fc934f698497987b6dd0"
_LEXICAL_STATE = 2  # ZZ_LEXSTATE[YyTraditionalTreebank3]: the state the lexer starts in (strictTreebank3=false)
_NEWLINE = None  # marks the lexer's NEWLINE token ("*NL*") in _ptb_lex output


class _Tables(NamedTuple):
    """JFlex 1.4 scanner tables (names as in the generated PTBLexer.java)."""

    cmap: list[int]  # UTF-16 code unit -> character class
    action: list[int]  # state -> action number (meaningful for accepting states)
    rowmap: list[int]  # state -> offset of its row in trans
    trans: list[int]  # rowmap[state] + class -> next state, -1 = none
    attribute: list[int]  # state -> bit 1: accepting, bit 8: no outgoing transition


def _corenlp_jar() -> Path:
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    return Path(ptb.__file__).resolve().parent / ptb.STANFORD_CORENLP_3_4_1_JAR


def _modified_utf8_units(raw: bytes) -> list[int]:
    """Decode a class-file CONSTANT_Utf8 ("modified UTF-8") into UTF-16 code units."""
    units, i = [], 0
    while i < len(raw):
        b = raw[i]
        if b < 0x80:
            units.append(b)
            i += 1
        elif b >> 5 == 0b110:
            units.append(((b & 0x1F) << 6) | (raw[i + 1] & 0x3F))
            i += 2
        else:
            units.append(((b & 0x0F) << 12) | ((raw[i + 1] & 0x3F) << 6) | (raw[i + 2] & 0x3F))
            i += 3
    return units


def _string_constants(data: bytes) -> dict[str, list[int]]:
    """``static final String`` fields of a class file (their ConstantValue), as UTF-16 code units."""
    (count,) = struct.unpack_from(">H", data, 8)
    pool: list[tuple[int, object] | None] = [None] * count
    pos, i = 10, 1
    while i < count:
        tag = data[pos]
        if tag == 1:  # Utf8
            (length,) = struct.unpack_from(">H", data, pos + 1)
            pool[i] = (1, data[pos + 3 : pos + 3 + length])
            pos += 3 + length
        elif tag in (7, 8, 16):  # Class, String, MethodType
            pool[i] = (tag, struct.unpack_from(">H", data, pos + 1)[0])
            pos += 3
        elif tag in (3, 4, 9, 10, 11, 12, 18):
            pos += 5
        elif tag in (5, 6):  # Long, Double take two slots
            pos += 9
            i += 1
        elif tag == 15:
            pos += 4
        else:
            raise ValueError(f"unexpected constant-pool tag {tag}")
        i += 1
    pos += 6  # access flags, this class, super class
    (n_interfaces,) = struct.unpack_from(">H", data, pos)
    pos += 2 + 2 * n_interfaces
    (n_fields,) = struct.unpack_from(">H", data, pos)
    pos += 2
    constants = {}
    for _ in range(n_fields):
        _, name_index, _, n_attributes = struct.unpack_from(">HHHH", data, pos)
        pos += 8
        for _ in range(n_attributes):
            attr_name, attr_len = struct.unpack_from(">HI", data, pos)
            if pool[attr_name][1] == b"ConstantValue":
                value = pool[struct.unpack_from(">H", data, pos + 6)[0]]
                if value is not None and value[0] == 8:
                    constants[pool[name_index][1].decode()] = _modified_utf8_units(pool[value[1]][1])
            pos += 6 + attr_len
    return constants


def _run_length_decode(packed: list[int], offset: int = 0) -> list[int]:
    """JFlex's packed tables: (count, value) pairs; transitions are stored as value + 1."""
    out: list[int] = []
    for k in range(0, len(packed), 2):
        out += [packed[k + 1] - offset] * packed[k]
    return out


@functools.lru_cache(maxsize=1)
def _lexer_tables() -> _Tables:
    jar = _corenlp_jar()
    with zipfile.ZipFile(jar) as zf:
        data = zf.read(_LEXER_CLASS)
    if hashlib.sha256(data).hexdigest() != _LEXER_CLASS_SHA256:
        raise RuntimeError(
            f"{jar} holds a different PTBLexer than CoreNLP 3.4.1 as shipped with pycocoevalcap 1.2; "
            "the pure-Python PTB backend only reproduces that one (use backend='java')"
        )
    c = _string_constants(data)
    rows = c["ZZ_ROWMAP_PACKED_0"]
    trans: list[int] = []
    part = 0
    while f"ZZ_TRANS_PACKED_{part}" in c:
        trans += _run_length_decode(c[f"ZZ_TRANS_PACKED_{part}"], offset=1)
        part += 1
    return _Tables(
        cmap=_run_length_decode(c["ZZ_CMAP_PACKED"]),
        action=_run_length_decode(c["ZZ_ACTION_PACKED_0"]),
        rowmap=[(rows[k] << 16) | rows[k + 1] for k in range(0, len(rows), 2)],
        trans=trans,
        attribute=_run_length_decode(c["ZZ_ATTRIBUTE_PACKED_0"]),
    )


# Action numbers are those of the 3.4.1 class (its `switch (ZZ_ACTION[state])`); what each does is read off
# its bytecode, with the options PTBTokenizer's main() uses: defaults + tokenizeNLs (ptb3 escaping on,
# invertible/americanize/strictTreebank3/escapeForwardSlashAsterisk off).
_IGNORE = frozenset({1, 7, 23})  # untokenizable character (deleted), whitespace, other ignorables
_NEWLINE_ACTION = 5
# Rules with general trailing context r1/r2: entry states of the forward r1 and the backward r2 automata.
_LOOKAHEAD = {24: (13, 14), 30: (3, 4), 40: (5, 6), 41: (16, 17), 43: (15, 14), 44: (9, 10), 47: (7, 8), 49: (11, 12)}
# Fixed pushbacks: 25 one-letter word, 26/36 quote + letter / clitic, 32 word+period before , ; :, 34 smiley,
# 42 gonna/'tis -> gon na, 48 abbreviation + 2 chars of context, 50 cannot -> can not, 53 "Co. Ltd" -> "Co.".
_PUSHBACK = {25: 1, 26: 1, 32: 1, 34: 1, 36: 1, 46: 1, 51: 1, 42: 2, 48: 2, 50: 3, 53: 4}
_TRAILING_WHITESPACE = frozenset({0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85})  # fixJFlex4SpaceAfterTokenBug

_QUOTE_SINGLE = re.compile("&apos;|'")
_QUOTE_DOUBLE = re.compile('"|&quot;')
_QUOTE_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_QUOTE_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_QUOTE_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_QUOTE_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")
_AMP_ENTITY = re.compile("&amp;", re.IGNORECASE | re.ASCII)
_GENERIC_CURRENCY = re.compile("[\u0080\u00a4\u20a0\u20ac]")
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _latex_quotes(tok: str, probably_left: bool) -> str:
    if probably_left:
        tok = _QUOTE_DOUBLE.sub("``", _QUOTE_SINGLE.sub("`", tok))
    else:
        tok = _QUOTE_DOUBLE.sub("''", _QUOTE_SINGLE.sub("'", tok))
    tok = _QUOTE_RIGHT_SINGLE.sub("'", _QUOTE_LEFT_SINGLE.sub("`", tok))
    return _QUOTE_RIGHT_DOUBLE.sub("''", _QUOTE_LEFT_DOUBLE.sub("``", tok))


def _remove_soft_hyphens(tok: str) -> str:
    if "\u00ad" not in tok:
        return tok
    return tok.replace("\u00ad", "") or "-"


def _normalize_fractions(tok: str) -> str:
    for char, spelled in _FRACTIONS.items():
        tok = tok.replace(char, spelled)
    return tok


def _normalize_currency(tok: str) -> str:
    return _GENERIC_CURRENCY.sub("$", tok.replace("\u00a2", "cents").replace("\u00a3", "#"))


def _parentheses(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


_TRANSFORM = {
    2: lambda t: "<",
    4: lambda t: "--" if 3 <= len(t) <= 4 else t,  # runs of hyphens
    6: _remove_soft_hyphens,  # words
    8: lambda t: _latex_quotes(t, False),
    10: lambda t: ">",
    11: lambda t: "--",  # en/em dashes, &mdash;
    12: _remove_soft_hyphens,  # numbers
    13: lambda t: "...",  # ellipses
    14: _normalize_fractions,
    15: _normalize_currency,
    16: lambda t: "-RCB-",
    17: lambda t: "-LRB-",
    18: lambda t: "-RRB-",
    20: lambda t: "-LCB-",
    21: lambda t: "-RSB-",
    22: lambda t: "-LSB-",
    26: lambda t: _latex_quotes(t, True),
    27: lambda t: t.replace(" ", "\u00a0"),  # SGML tags
    28: _parentheses,  # Asian smileys
    29: _remove_soft_hyphens,  # hyphenated words
    30: _remove_soft_hyphens,  # word before a clitic ('s 'll ...)
    32: _remove_soft_hyphens,
    34: _parentheses,  # smileys
    35: lambda t: _latex_quotes(t, True),
    36: lambda t: _latex_quotes(t, False),  # clitics n't 's 'm ...
    37: lambda t: _AMP_ENTITY.sub("&", t),
    38: lambda t: t.replace(" ", "\u00a0"),
    39: lambda t: t.replace(" ", "\u00a0"),  # fractions "5 7/8"
    40: _remove_soft_hyphens,  # word before n't
    46: _remove_soft_hyphens,
    51: lambda t: _AMP_ENTITY.sub("&", t),
    54: lambda t: _parentheses(t.replace(" ", "\u00a0")),  # phone numbers
}


def _trailing_context_split(tables: _Tables, buf: array.array, start: int, end: int, fwd: int, bwd: int) -> int:
    """JFlex 1.4's general lookahead: the token is r1 of r1/r2, ending at the last split point that works.

    A forward run of the r1 automaton marks where r1 could end; a backward run of the reversed r2
    automaton from the end of the whole match finds the rightmost such mark where r2 matches the rest.
    """
    cmap, trans, rowmap, attribute = tables.cmap, tables.trans, tables.rowmap, tables.attribute
    r1_ends = set()
    pos, state = start, fwd
    while state != -1 and pos < end:
        if attribute[state] & 1:
            r1_ends.add(pos)
        state = trans[rowmap[state] + cmap[buf[pos]]]
        pos += 1
    if state != -1 and attribute[state] & 1:
        r1_ends.add(pos)
    pos, state = end, bwd
    while pos not in r1_ends or not attribute[state] & 1:
        pos -= 1
        state = trans[rowmap[state] + cmap[buf[pos]]]
        if state == -1:  # Java would throw ArrayIndexOutOfBounds here
            raise RuntimeError("PTB lexer: trailing-context automaton failed")
    return pos


def _ptb_lex(text: str) -> list[str | None]:
    """CoreNLP 3.4.1 PTBLexer tokens of ``text`` (``None`` for a line break), before lower-casing."""
    tables = _lexer_tables()
    cmap, action_of, rowmap, trans, attribute = tables
    buf = array.array("H", text.encode("utf-16-le"))  # Java strings are UTF-16 code units
    end = len(buf)
    tokens: list[str | None] = []
    marked = 0
    while True:
        # Longest match: run the DFA, remembering the last accepting state (as JFlex's zzAction).
        start = pos = marked
        state = _LEXICAL_STATE
        accepted = state if attribute[state] & 1 else -1
        while pos < end:
            state = trans[rowmap[state] + cmap[buf[pos]]]
            pos += 1
            if state == -1:
                break
            if attribute[state] & 1:
                accepted, marked = state, pos
                if attribute[state] & 8:
                    break
        if accepted == -1:
            if start == end:
                return tokens
            raise RuntimeError(f"PTB lexer: no rule matches at UTF-16 offset {start}")
        action = action_of[accepted]
        if action in _LOOKAHEAD:
            marked = _trailing_context_split(tables, buf, start, marked, *_LOOKAHEAD[action])
        if action in (44, 47):  # abbreviation before a digit / acronym before a sentence start
            while marked > start and buf[marked - 1] in _TRAILING_WHITESPACE:
                marked -= 1
        token_end = None  # set when the token keeps characters that are also pushed back
        if action in _PUSHBACK:
            marked -= _PUSHBACK[action]
        elif action == 35:  # quote before a word: just the quote
            marked = start + 1
        elif action in (33, 49) or (action == 47 and marked - start != 2):
            token_end = marked  # "etc." / "U.S." then the period again as its own token
            marked -= 1
        elif action == 47:  # one-letter acronym "I.": the letter, then the period
            marked -= 1
        if action in _IGNORE:
            continue
        if action == _NEWLINE_ACTION:
            tokens.append(_NEWLINE)
            continue
        tok = buf[start : token_end if token_end is not None else marked].tobytes()
        tok = tok.decode("utf-16-le", "surrogatepass")
        transform = _TRANSFORM.get(action)
        tokens.append(transform(tok) if transform else tok)


def _ptb_tokenizer_output(document: str) -> str:
    """What ``PTBTokenizer -preserveLines -lowerCase`` prints for ``document`` (tokReader in PTBTokenizer)."""
    out: list[str] = []
    begin_line = True
    for tok in _ptb_lex(document):
        if tok is _NEWLINE:
            out.append("\n")
            begin_line = True
        else:
            if not begin_line:
                out.append(" ")
            begin_line = False
            out.append(tok.lower())  # Java: toLowerCase(Locale.ENGLISH)
    # The UTF-8 writer turns an unpaired surrogate into "?".
    return _LONE_SURROGATE.sub("?", "".join(out))
