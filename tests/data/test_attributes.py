"""Generated VQA from an attribute table (data/attributes/) over tests/fixtures/attributes/: a 12-row fashion
catalogue as .csv and .xlsx (same content; sleeve_length typed as numbers in the .xlsx), 12 PNGs of 24x18 px
(studio/look12.png is a byte copy of look05.png) and en/pt/ru templates. Table row n+1 describes look<n>."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import Counter, defaultdict

import pytest
from helpers import REPO

from vlmtune.data.attributes import generate_vqa, load_templates
from vlmtune.data.store import MANIFEST, BadRecord, read_samples

FIX = REPO / "tests" / "fixtures" / "attributes"
CSV, XLSX, TEMPLATES, IMAGES = FIX / "catalogue.csv", FIX / "catalogue.xlsx", FIX / "templates.yaml", FIX / "images"


def gen(tmp_path, name="out", table=CSV, templates=TEMPLATES, images=IMAGES, **kw):
    """Generate into tmp_path/name; returns (report, {id: Sample}) read back from the written dataset."""
    report = generate_vqa(table, images, templates, tmp_path / name, progress=False, **kw)
    return report, {s.id: s for s in read_samples(tmp_path / name)[0]}


def qa(samples, id):
    s = samples[id]
    return s.question, s.target


def test_questions_and_answers_in_three_languages(tmp_path):
    report, samples = gen(tmp_path)
    # look01 (row 2): t-shirt, red, plain, phone, no hood
    assert qa(samples, "look01-top_colour-en") == ("What colour is the t-shirt?", "red")
    assert qa(samples, "look01-top_colour-pt") == ("Qual é a cor da parte de cima?", "vermelho")
    assert qa(samples, "look01-top_colour-ru") == ("Какого цвета верх?", "красный")
    # a placeholder takes the row's value, translated when its column is a translated attribute
    assert qa(samples, "look01-top_pattern-en") == ("Is the t-shirt plain or striped?", "plain")
    assert qa(samples, "look01-top_pattern-pt") == ("Peça: camiseta. Qual é a estampa?", "liso")
    assert qa(samples, "look01-top_pattern-ru") == ("Какой узор у верха?", "однотонный")
    assert qa(samples, "look02-top_type-pt") == ("O que a pessoa veste em cima?", "suéter")
    assert qa(samples, "look02-top_pattern-ru")[1] == "в полоску"
    assert qa(samples, "look12-top_colour-ru")[1] == "зелёный"
    # YAML keys `yes` / `no` stay strings (a YAML 1.1 loader turns them into booleans and the lookup fails)
    assert qa(samples, "look01-hood-pt") == ("A parte de cima tem capuz?", "não")
    assert qa(samples, "look02-hood-ru") == ("Есть ли у верха капюшон?", "да")
    s = samples["look01-top_colour-pt"]
    assert s.images == ["images/look01.png"] and s.task == "vqa" and s.answers is None and s.source == "attributes"
    assert s.meta == {"question_type": "top_colour", "lang": "pt", "row": 2, "value": "red"}
    assert s.messages == [{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "Qual é a cor da parte de cima?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "vermelho"}]}]
    # look03 (row 4) has no top_type: the only usable colour template is the one without {top_type}; the pattern
    # questions in en and pt need {top_type}, so it gets only the Russian one
    assert qa(samples, "look03-top_colour-en") == ("What is the colour of the top?", "blue")
    assert "look03-top_type-en" not in samples and "look03-top_pattern-en" not in samples
    assert "look03-top_pattern-pt" not in samples and qa(samples, "look03-top_pattern-ru")[1] == "однотонный"
    assert report["no_question"] == {"top_pattern": {"en": 1, "pt": 1}}
    # skip values ("n/a", "unknown", empty) ask nothing
    assert not any(i.startswith("look09-top_colour") or i.startswith("look07-top_pattern") for i in samples)
    assert not any(i.startswith("look05-accessory") for i in samples)
    assert report["skipped_cells"] == {"top_type": 1, "top_colour": 1, "top_pattern": 1, "accessory": 1,
                                       "pockets": 0, "hood": 0, "sleeve_length": 0}
    # 12 rows x 7 attributes x 3 languages, less 4 skipped cells x 3 languages, less the 2 unusable templates
    assert report["samples"] == len(samples) == 12 * 7 * 3 - 4 * 3 - 2
    assert report["questions_per_attribute"]["top_pattern"] == {"en": 10, "pt": 10, "ru": 11}
    assert report["images"] == 12 and report["rejected"] == 0 and report["balanced"] is None
    assert report["distribution"]["top_colour"] == {"red": 6, "blue": 3, "green": 2}
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8")) == report
    manifest = (tmp_path / "out" / MANIFEST).read_text(encoding="utf-8")
    assert "Какого цвета верх?" in manifest and "suéter" in manifest  # UTF-8 as written, not \\u escapes
    for rel in ("look01.png", "studio/look11.png"):
        assert (tmp_path / "out" / "images" / rel).read_bytes() == (IMAGES / rel).read_bytes()
    assert samples["look11-hood-en"].images == ["images/studio/look11.png"]


def test_answers_are_never_normalised(tmp_path):
    _, samples = gen(tmp_path)
    assert qa(samples, "look01-accessory-en")[1] == "phone"  # not "ph1"
    assert qa(samples, "look02-accessory-en")[1] == "Phone 2"  # not "phone 2" or "phone two"
    assert qa(samples, "look02-accessory-pt")[1] == "Telefone 2"
    assert qa(samples, "look04-accessory-en")[1] == "phone"  # " phone " in the table: only the spaces go
    assert samples["look04-accessory-en"].meta["value"] == "phone"
    assert qa(samples, "look01-pockets-en")[1] == "one"  # not "1"
    for lang in ("en", "pt", "ru"):  # translate: false -> the cell in every language
        assert qa(samples, f"look01-sleeve_length-{lang}")[1] == "0.5"  # not ".5" or "1/2"
        assert qa(samples, f"look02-sleeve_length-{lang}")[1] == "1"  # not "1.0"
        assert qa(samples, f"look03-sleeve_length-{lang}")[1] == "0.25"


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_csv_xlsx_other_delimiters_and_backslashes_give_identical_samples(tmp_path, delimiter):
    _, from_csv = gen(tmp_path, "csv")
    _, from_xlsx = gen(tmp_path, "xlsx", table=XLSX)
    with open(CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = [[r[0].replace("/", "\\"), *r[1:]] for r in rows]  # typed on Windows: studio\look11.png
    other = tmp_path / "catalogue.csv"
    with open(other, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    _, from_other = gen(tmp_path, "other", table=other)
    assert len(from_csv) == 238
    assert [s.to_json() for s in from_xlsx.values()] == [s.to_json() for s in from_csv.values()]
    assert [s.to_json() for s in from_other.values()] == [s.to_json() for s in from_csv.values()]


def test_template_choice_is_seeded_and_follows_the_image_not_the_row_order(tmp_path):
    _, a = gen(tmp_path, "a")
    colour_en = {i: s.question for i, s in a.items() if i.endswith("top_colour-en")}
    assert set(colour_en.values()) == {"What colour is the t-shirt?", "What colour is the sweater?",
                                       "What colour is the tank top?", "What is the colour of the top?"}
    with open(CSV, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    random.Random(1).shuffle(rows)
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    _, b = gen(tmp_path, "b", table=shuffled)
    assert {i: (s.question, s.target, s.split) for i, s in b.items()} == {
        i: (s.question, s.target, s.split) for i, s in a.items()}
    assert b["look01-top_colour-en"].meta["row"] == 2 + rows.index(next(r for r in rows if r[0] == "look01.png"))
    _, seed1 = gen(tmp_path, "seed1", seed=1)
    assert {i: s.question for i, s in seed1.items()} != {i: s.question for i, s in a.items()}


def _split_of_images(samples) -> dict[str, set[str]]:
    by_image = defaultdict(set)
    for s in samples.values():
        by_image[s.images[0]].add(s.split)
    return by_image


def test_splits_by_image_and_identical_images_share_one(tmp_path):
    assignments = []
    for seed in range(6):
        report, samples = gen(tmp_path, f"s{seed}", seed=seed, val=0.2, test=0.2)
        by_image = _split_of_images(samples)
        assert len(by_image) == 12 and all(len(splits) == 1 for splits in by_image.values()), by_image
        split = {image: splits.pop() for image, splits in by_image.items()}
        assert split["images/look05.png"] == split["images/studio/look12.png"]  # the same bytes
        assert report["split_images"] == dict(sorted(Counter(split.values()).items()))
        assert report["splits"] == dict(sorted(Counter(s.split for s in samples.values()).items()))
        assignments.append(split)
    assert Counter(assignments[0].values()) == {"train": 8, "val": 3, "test": 1}
    assert len({tuple(sorted(a.items())) for a in assignments}) == 6  # the seed moves images
    _, again = gen(tmp_path, "again", seed=0, val=0.2, test=0.2)
    assert {i: s.split for i, s in again.items()} == {i: s.split for i, s in gen(tmp_path, "s0b", seed=0, val=0.2,
                                                                                test=0.2)[1].items()}


def _counts(samples, split):
    counts = defaultdict(Counter)
    for s in samples.values():
        if s.split == split:
            counts[s.meta["question_type"], s.meta["lang"]][s.target] += 1
    return counts


def test_balance_caps_train_only(tmp_path):
    # seed 3: train holds look01-06 and look10-12, val look07-08, test look09
    _, natural = gen(tmp_path, "natural", seed=3, val=0.2, test=0.2)
    report, capped = gen(tmp_path, "capped", seed=3, val=0.2, test=0.2, balance="cap:1.5")
    before, after = _counts(natural, "train"), _counts(capped, "train")
    assert before["top_colour", "en"] == {"red": 5, "blue": 2, "green": 2}
    assert after["top_colour", "en"] == {"red": 3, "blue": 2, "green": 2}  # floor(1.5 * 2)
    assert after["top_colour", "ru"] == {"красный": 3, "синий": 2, "зелёный": 2}
    assert before["pockets", "en"] == {"one": 6, "two": 3} and after["pockets", "en"] == {"one": 4, "two": 3}
    for key, counts in before.items():
        keep = int(1.5 * min(counts.values()))
        assert after[key] == {v: min(n, keep) for v, n in counts.items()}, key
        assert max(after[key].values()) <= 1.5 * min(after[key].values())
    # the same images are dropped in every language
    kept_images = {lang: {s.images[0] for s in capped.values() if s.split == "train" and s.meta["lang"] == lang
                          and s.meta["question_type"] == "top_colour"} for lang in ("en", "pt", "ru")}
    assert kept_images["en"] == kept_images["pt"] == kept_images["ru"]
    for split in ("val", "test"):  # natural distribution, untouched
        assert {i: s.to_json() for i, s in capped.items() if s.split == split} == {
            i: s.to_json() for i, s in natural.items() if s.split == split}
    dropped = len(natural) - len(capped)
    assert dropped > 0 and report["balanced"]["dropped"] == dropped and report["samples"] == len(capped)
    assert report["balanced"]["train_before"]["top_colour"]["en"] == {"red": 5, "blue": 2, "green": 2}
    assert report["balanced"]["train_after"]["top_colour"]["pt"] == {"vermelho": 3, "azul": 2, "verde": 2}
    _, cap1 = gen(tmp_path, "cap1", seed=3, val=0.2, test=0.2, balance="cap:1")
    assert _counts(cap1, "train")["top_colour", "en"] == {"red": 2, "blue": 2, "green": 2}
    with pytest.raises(ValueError, match="cap:K with K >= 1"):
        gen(tmp_path, "bad", balance="cap:0.5")


def test_rare_values_are_reported_and_kept(tmp_path, capsys):
    report, samples = gen(tmp_path, min_count=3)
    assert report["rare"] == [{"attribute": "top_type", "value": "tank top", "count": 2},
                              {"attribute": "top_colour", "value": "green", "count": 2},
                              {"attribute": "accessory", "value": "Phone 2", "count": 2},
                              {"attribute": "sleeve_length", "value": "0.25", "count": 2}]
    assert "too rare to learn" in capsys.readouterr().err
    assert sum(s.target == "green" for s in samples.values()) == 2  # kept: the user decides


def test_untranslated_values_are_an_error_listing_them(tmp_path):
    text = TEMPLATES.read_text(encoding="utf-8")
    broken = tmp_path / "templates.yaml"
    broken.write_text(text.replace(", green: verde}", "}").replace(", bag: сумка}", "}")
                      .replace("      pt: {yes: sim, no: não}\n", ""), encoding="utf-8")
    with pytest.raises(ValueError) as e:
        gen(tmp_path, templates=broken)
    message = str(e.value)
    assert "top_colour: answers.pt has no translation for 'green' (rows 6, 13)" in message
    assert "accessory: answers.ru has no translation for 'bag' (rows 4, 7, 9, 12)" in message
    assert "hood: no answers.pt" in message
    assert not (tmp_path / "out" / MANIFEST).exists()
    report, samples = gen(tmp_path, "en_only", templates=broken, langs=["en"])  # English needs no translation
    assert {s.meta["lang"] for s in samples.values()} == {"en"} and report["languages"] == ["en"]


@pytest.mark.parametrize("edit, error", [
    (lambda t: t.replace("{top_type}?", "{top_typo}?", 1), r"'top_typo' \(used by attributes.top_colour.questions"),
    (lambda t: t.replace('      ru: ["Какого цвета верх?"]\n', ""),
     r"top_colour: no questions for language\(s\) \['ru'\]"),
    (lambda t: t.replace("column: top_colour", "colum: top_colour"), r"unknown key\(s\) \['colum'\]"),
    (lambda t: t.replace("{top_type}?", "{top_type?", 1), "unmatched brace"),
])
def test_template_mistakes_are_named(tmp_path, edit, error):
    broken = tmp_path / "templates.yaml"
    broken.write_text(edit(TEMPLATES.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        gen(tmp_path, templates=broken)


def test_templates_read_every_scalar_as_text():
    tpl = load_templates(TEMPLATES)
    hood = next(a for a in tpl.attributes if a.name == "hood")
    assert hood.answers["pt"] == {"yes": "sim", "no": "não"}
    assert tpl.languages == ("en", "pt", "ru") and tpl.values_language == "en"


def _with_bad_rows(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    table = tmp_path / "catalogue.csv"
    text = CSV.read_bytes() + (
        b"look99.png,t-shirt,red,plain,phone,one,no,0.5,\n"  # row 14: no such image
        b",t-shirt,red,plain,phone,one,no,0.5,\n"  # row 15: empty image cell
        b"../catalogue.csv,t-shirt,red,plain,phone,one,no,0.5,\n"  # row 16: escapes the images directory
        b"look01.png,t-shirt,red,plain,phone, case,one,no,0.5,note\n"  # row 17: unquoted comma, columns shifted
        b"broken.png,t-shirt,red,plain,phone,one,no,0.5,\n"  # row 18: not an image
        b"studio/look01.png,t-shirt,red,plain,phone,one,no,0.5,\n"  # row 19: missing (and a repeated stem)
        b"look10.png,t-shirt,r\xe9d,plain,phone,one,no,0.5,\n"  # row 20: Latin-1, not UTF-8
    )
    table.write_bytes(text)
    return table, images


def test_bad_rows_stop_the_run_naming_file_and_row(tmp_path):
    table, images = _with_bad_rows(tmp_path)
    with pytest.raises(BadRecord, match=r"catalogue.csv:14: row 14: image 'look99.png' not found") as e:
        gen(tmp_path, table=table, images=images)
    assert isinstance(e.value, ValueError) and not (tmp_path / "out").exists()


def test_bad_rows_are_skipped_and_listed(tmp_path):
    table, images = _with_bad_rows(tmp_path)
    (images / "studio" / "look01.png").write_bytes((images / "look02.png").read_bytes())  # row 19: stem clash
    report, samples = gen(tmp_path, table=table, images=images, skip_bad=True)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejected] == [(str(table), n) for n in range(14, 21)]
    errors = [r["error"] for r in rejected]
    assert errors[0].startswith("row 14: image 'look99.png' not found")
    assert errors[1] == "row 15: empty image cell ('image')"
    assert errors[2].startswith("row 16: image path '../catalogue.csv' escapes")
    assert errors[3].startswith("row 17: 10 cells but the header has 9 columns")
    assert errors[4].startswith("row 18:") and "cannot decode image" in errors[4]
    assert errors[5].startswith("row 19: image 'studio/look01.png': the name 'look01' is already used by row 2")
    assert errors[6] == "row 20: not valid UTF-8 (save the table as UTF-8 CSV)"
    assert report["rejected"] == 7 and report["images"] == 12 and len(samples) == 238  # the good rows, unchanged


def test_bad_row_in_xlsx_names_the_sheet_row(tmp_path):
    import openpyxl

    wb = openpyxl.load_workbook(XLSX)
    wb["catalogue"].append(["look99.png", "t-shirt", "red", "plain", "phone", "one", "no", 0.5])
    wb.save(tmp_path / "catalogue.xlsx")
    with pytest.raises(BadRecord, match=r"catalogue.xlsx:14: row 14: image 'look99.png' not found"):
        gen(tmp_path, table=tmp_path / "catalogue.xlsx")
    with pytest.raises(ValueError, match=r"no sheet 'missing'; sheets: \['catalogue', 'notes'\]"):
        gen(tmp_path, table=XLSX, sheet="missing")


def test_cli_generates_the_same_dataset_as_the_function(tmp_path, capsys):
    from vlmtune.cli import main
    from vlmtune.data.store import read_samples

    args = ["--images", str(FIX / "images"), "--templates", str(FIX / "templates.yaml"), "--min-count", "3"]
    assert main(["data", "vqa-from-attributes", str(FIX / "catalogue.csv"), *args, "--out", str(tmp_path / "a"),
                 "--balance", "cap:2", "--langs", "en,ru"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    generate_vqa(FIX / "catalogue.csv", FIX / "images", FIX / "templates.yaml", tmp_path / "b", langs="en,ru",
                 balance="cap:2", min_count=3, progress=False)
    a, b = read_samples(tmp_path / "a")[0], read_samples(tmp_path / "b")[0]
    assert [s.to_json() for s in a] == [s.to_json() for s in b] and printed["samples"] == len(a)
    assert printed["languages"] == ["en", "ru"] and {s.meta["lang"] for s in a} == {"en", "ru"}


# ---------------------------------------------------------------- yes/no questions: a true and a false statement

YES_NO_TEMPLATES = FIX / "templates_yes_no.yaml"
WORDS = {"en": ("yes", "no"), "pt": ("sim", "não"), "ru": ("да", "нет")}


def _yes_no(samples):
    return {i: s for i, s in samples.items() if s.meta.get("answer_type") == "yes/no"}


def test_yes_no_questions_state_the_right_and_a_wrong_value(tmp_path):
    report, samples = gen(tmp_path, templates=YES_NO_TEMPLATES)
    # look01 (row 2): t-shirt, red, sleeves 0.5
    assert qa(samples, "look01-top_type-yes-en") == ("Is the person wearing a t-shirt on top?", "yes")
    assert qa(samples, "look01-top_type-yes-pt") == ("A pessoa veste camiseta em cima?", "sim")
    assert qa(samples, "look01-top_type-yes-ru") == ("Сверху надет предмет «футболка»?", "да")
    wrong = samples["look01-top_type-no-en"].meta["stated"]
    assert wrong in ("sweater", "tank top")
    pt = {"sweater": "suéter", "tank top": "regata"}[wrong]
    assert qa(samples, "look01-top_type-no-en") == (f"Is the person wearing a {wrong} on top?", "no")
    assert qa(samples, "look01-top_type-no-pt") == (f"A pessoa veste {pt} em cima?", "não")  # the same wrong value
    assert samples["look01-top_type-no-pt"].meta == {"question_type": "top_type yes/no", "lang": "pt", "row": 2,
                                                     "answer_type": "yes/no", "value": "t-shirt", "stated": wrong}
    assert samples["look01-top_type-no-pt"].images == ["images/look01.png"]
    # the open questions are still there, unchanged
    assert qa(samples, "look01-top_type-pt") == ("O que a pessoa veste em cima?", "camiseta")
    assert samples["look01-top_type-pt"].meta == {"question_type": "top_type", "lang": "pt", "row": 2,
                                                  "value": "t-shirt"}
    # other placeholders take the row's own value; a language-neutral value is stated as written
    yes_q = qa(samples, "look02-top_colour-yes-en")[0]
    assert yes_q in ("Is the sweater red?", "Is the top red?")
    wrong = samples["look02-top_colour-no-en"].meta["stated"]
    assert qa(samples, "look02-top_colour-no-en") == (yes_q.replace("red", wrong), "no")  # the same template
    assert qa(samples, "look02-sleeve_length-yes-pt") == ("As mangas cobrem 1 do braço?", "sim")
    # look03 has no top_type: no top_type questions, and its colour statement uses the template without {top_type}
    assert not any(i.startswith("look03-top_type") for i in samples)
    assert qa(samples, "look03-top_colour-yes-en") == ("Is the top blue?", "yes")
    # look09's colour is a skip value: nothing is stated about it
    assert not any(i.startswith("look09-top_colour") for i in samples)

    yes_no = _yes_no(samples)
    for s in yes_no.values():
        yes, no = WORDS[s.meta["lang"]]
        assert s.target == (yes if s.meta["stated"] == s.meta["value"] else no), s.id
        if s.meta["lang"] == "en":
            assert s.meta["stated"] in s.question, s.id
    # balanced: as many yes as no per question type, language and split
    counts = Counter((s.meta["question_type"], s.meta["lang"], s.split, s.target) for s in yes_no.values())
    for (qtype, lang, split, _), n in counts.items():
        yes, no = WORDS[lang]
        assert counts[qtype, lang, split, yes] == counts[qtype, lang, split, no] == n
    # 11 rows with a top type, 11 with a colour, 12 with a sleeve length: one yes and one no each, in 3 languages
    assert report["questions_per_attribute"]["top_type yes/no"] == {"en": 22, "pt": 22, "ru": 22}
    assert report["questions_per_attribute"]["top_colour yes/no"] == {"en": 22, "pt": 22, "ru": 22}
    assert report["questions_per_attribute"]["sleeve_length yes/no"] == {"en": 24, "pt": 24, "ru": 24}
    assert len(yes_no) == 3 * (22 + 22 + 24) and report["samples"] == len(samples) == len(yes_no) + 3 * (11 + 11 + 12)
    assert report["yes_no_single_value"] == []


def test_the_false_value_is_drawn_from_the_column_by_seed_and_image(tmp_path):
    _, a = gen(tmp_path, "a", templates=YES_NO_TEMPLATES, seed=0)
    _, b = gen(tmp_path, "b", templates=YES_NO_TEMPLATES, seed=0)
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    # another seed draws other false values for some rows; each is always one of the column's other values
    _, c = gen(tmp_path, "c", templates=YES_NO_TEMPLATES, seed=7)
    stated = {seed: {i: s.meta["stated"] for i, s in samples.items() if i.endswith("-no-en")}
              for seed, samples in ((0, a), (7, c))}
    assert stated[0].keys() == stated[7].keys() and stated[0] != stated[7]
    values = {"top_type": {"t-shirt", "sweater", "tank top"}, "top_colour": {"red", "blue", "green"},
              "sleeve_length": {"0.25", "0.5", "1"}}
    for i, s in a.items():
        if "-no-" in i:
            attr = s.meta["question_type"].removesuffix(" yes/no")
            assert s.meta["stated"] in values[attr] - {s.meta["value"]}, i
    assert len({s.meta["stated"] for i, s in a.items() if i.endswith("top_colour-no-en")}) > 1  # not one value
    # re-sorting the table changes nothing: the draw follows the image, not the row
    rows = list(csv.reader(open(CSV, encoding="utf-8", newline="")))
    shuffled = tmp_path / "shuffled.csv"
    body = rows[1:]
    random.Random(5).shuffle(body)
    with open(shuffled, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([rows[0], *body])
    _, d = gen(tmp_path, "d", table=shuffled, templates=YES_NO_TEMPLATES, seed=0)
    assert {i: (s.messages, s.split, s.meta["stated"]) for i, s in _yes_no(d).items()} == {
        i: (s.messages, s.split, s.meta["stated"]) for i, s in _yes_no(a).items()}


def test_balance_cap_leaves_the_yes_no_questions_balanced(tmp_path):
    _, natural = gen(tmp_path, "natural", templates=YES_NO_TEMPLATES, seed=3, val=0.2, test=0.2)
    report, capped = gen(tmp_path, "capped", templates=YES_NO_TEMPLATES, seed=3, val=0.2, test=0.2,
                         balance="cap:1")
    assert report["balanced"]["dropped"] > 0  # the open colour questions were thinned ...
    assert _yes_no(capped).keys() == _yes_no(natural).keys()  # ... the statements, already balanced, were not
    # seed 3: train holds 9 images (look01-06, look10-12), each with a colour: 9 true and 9 false statements
    assert report["balanced"]["train_after"]["top_colour yes/no"]["pt"] == {"sim": 9, "não": 9}


def test_yes_no_answers_in_other_languages_come_from_the_templates(tmp_path):
    text = YES_NO_TEMPLATES.read_text(encoding="utf-8")
    custom = tmp_path / "custom.yaml"
    custom.write_text("yes_no_answers: {pt: [Sim, Não]}\n" + text, encoding="utf-8")
    _, samples = gen(tmp_path, templates=custom, langs="pt")
    assert {s.target for s in _yes_no(samples).values()} == {"Sim", "Não"}
    tl = tmp_path / "tl.yaml"  # a language without built-in words must give them
    tl.write_text(text.replace("languages: [en, pt, ru]", "languages: [en, pt, tl]").replace("ru:", "tl:"),
                  encoding="utf-8")
    with pytest.raises(ValueError, match=r"no yes/no answers for language 'tl': add yes_no_answers: \{tl: "):
        load_templates(tl)
    tl.write_text("yes_no_answers: {tl: [oo, hindi]}\n" + tl.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_templates(tl).yes_no_answers["tl"] == ("oo", "hindi")


@pytest.mark.parametrize("edit, error", [
    (lambda t: t.replace('["A pessoa veste {top_type} em cima?"]', '["A pessoa veste algo em cima?"]'),
     r"top_type.yes_no.pt: 'A pessoa veste algo em cima\?' does not contain \{top_type\}"),
    (lambda t: t.replace('      ru: ["Верх цвета «{top_colour}»?"]\n', ""),
     r"top_colour: no yes_no questions for language\(s\) \['ru'\]"),
    (lambda t: "yes_no_answers: {pt: [sim, sim]}\n" + t, r"yes_no_answers.pt: expected two different words"),
    (lambda t: "yes_no_answers: {es: [sí, no]}\n" + t, r"yes_no_answers: language\(s\) \['es'\] not in languages"),
    (lambda t: t.replace("{top_type} {top_colour}?", "{top_typo} {top_colour}?"),
     r"'top_typo' \(used by attributes.top_colour.yes_no.en"),
])
def test_yes_no_template_mistakes_are_named(tmp_path, edit, error):
    broken = tmp_path / "templates.yaml"
    broken.write_text(edit(YES_NO_TEMPLATES.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        gen(tmp_path, templates=broken)


def test_a_column_with_one_value_gets_no_yes_no_questions(tmp_path, capsys):
    table = tmp_path / "one.csv"
    table.write_text("image,top_type,top_colour,sleeve_length\nlook01.png,t-shirt,red,1\nlook02.png,sweater,red,1\n",
                     encoding="utf-8")
    report, samples = gen(tmp_path, table=table, templates=YES_NO_TEMPLATES, val=0, test=0)
    assert report["yes_no_single_value"] == ["top_colour", "sleeve_length"]
    assert "no yes/no questions for top_colour, sleeve_length" in capsys.readouterr().err
    assert {s.meta["question_type"] for s in _yes_no(samples).values()} == {"top_type yes/no"}
    assert qa(samples, "look02-top_type-no-en") == ("Is the person wearing a t-shirt on top?", "no")
