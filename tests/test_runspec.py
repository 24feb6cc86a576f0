"""One run, described once: the same description from Python keywords, command-line options and a config file;
every command takes an option the same way; mistakes are named before a run starts."""

from __future__ import annotations

import json
import subprocess

import pytest

from subcell_scale.cli import build_parser, main, parse
from subcell_scale.cli._options import given_options
from subcell_scale.errors import ConfigError
from subcell_scale.runspec import COMMANDS, OPTIONS, describe_run, option_keywords


def _cli_spec(command: str, argv: list[str]):
    """The run description the command line gives (as the command itself builds it)."""
    args = parse([command, *argv])
    keywords = option_keywords(given_options(args, command))
    return describe_run(keywords.pop("plates", None), **keywords)


def test_keywords_options_and_a_config_file_describe_the_same_run(tmp_path):
    plate = tmp_path / "p.zarr"
    (tmp_path / "platemap.csv").write_text("plate,well\n")
    python = describe_run(str(plate), out=tmp_path / "run", platemap=tmp_path / "platemap.csv",
                          preset="jump-cellpainting", model="random", n_workers=2, batch_size=16, figures=False,
                          channel_map={"protein": ["Mito", "AGP"]}, label_name="nuclei", segment_if_missing=False,
                          out_size=224, **{"design.null_size": 1000, "design.seed": 7,
                                           "segmentation.nucleus_channel": "DNA"})
    argv = [str(plate), "--out", str(tmp_path / "run"), "--platemap", str(tmp_path / "platemap.csv"), "--preset",
            "jump-cellpainting", "--model", "random", "--workers", "2", "--batch-size", "16", "--no-figures",
            "--channel-map", "protein=Mito,AGP", "--label-name", "nuclei", "--no-segment", "--set", "out_size=224",
            "--null-size", "1000", "--seed", "7", "--channel-nucleus", "DNA"]
    config = tmp_path / "run.yaml"
    config.write_text("plates: [p.zarr]\nout: run\nplatemap: platemap.csv\npreset: jump-cellpainting\nmodel: random\n"
                      "workers: 2\nbatch_size: 16\nno-figures: true\nchannel-map: {protein: [Mito, AGP]}\n"
                      "label-name: nuclei\nno_segment: true\nset: {out_size: 224}\nnull-size: 1000\nseed: 7\n"
                      "channel-nucleus: DNA\n")
    import subcell_scale as ss

    keywords = ss.read_config(config)  # a notebook's route to the same file
    from_notebook = describe_run(keywords.pop("plates"), **keywords)
    for other in (_cli_spec("run", argv), _cli_spec("run", ["--config", str(config)]), from_notebook):
        assert other.params == python.params
        assert other.options() == python.options()
    assert python.params.overridden == ("channel_map", "design", "label_name", "out_size", "segmentation")
    # the command line wins over the config file, and mappings merge entry by entry
    spec = _cli_spec("run", ["--config", str(config), "--batch-size", "8", "--set", "mask_mode=own_cell"])
    assert spec.batch_size == 8 and spec.params.crop.size == 224 and spec.params.crop.mask_mode == "own_cell"


def test_every_command_takes_an_option_the_same_way():
    for command, flags in COMMANDS.items():
        parser = build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        declared = {s for a in sub._actions for s in a.option_strings}
        assert {f"--{f}" for f in flags} <= declared, command
        assert {"-v", "--traceback"} <= declared, command
    # one help text per option, whatever the command (a command may only say more about --out/--set/--preset)
    helps = {}
    for command in COMMANDS:
        sub = next(a for a in build_parser(command)._actions if a.dest == "command").choices[command]
        group = next(g for g in sub._action_groups if g.title.startswith("run options"))
        for action in group._group_actions:
            for name in action.option_strings:
                if name.startswith("--") and name[2:] in OPTIONS and name not in ("--out", "--set", "--preset"):
                    helps.setdefault(name, set()).add(action.help)
    assert all(len(texts) == 1 for texts in helps.values()), helps


def test_options_that_take_several_values_stop_before_a_plate(tmp_path):
    (tmp_path / "c.pth").write_bytes(b"")
    argv = ["--set", "out_size=224", "mask_mode=none", "a.zarr", "--channel-map", "nucleus=DAPI", "b.zarr",
            "--classifiers", str(tmp_path / "c.pth"), "c.zarr"]
    args = parse(["embed", *argv])
    assert args.plates == ["a.zarr", "b.zarr", "c.zarr"]
    assert args.set == ["out_size=224", "mask_mode=none"] and args.channel_map == ["nucleus=DAPI"]
    assert args.classifiers == [str(tmp_path / "c.pth")]
    # segment takes several settings too, in one --set or repeated
    args = parse(["segment", "--set", "a=1", "b=2", "p.zarr", "--set", "c=3"])
    assert args.set == ["a=1", "b=2", "c=3"] and args.plates == ["p.zarr"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_and_traceback_stand_anywhere(where, tmp_path, capsys):
    common = ["-v", "--traceback"]
    argv = ["evaluate", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m")]
    argv = common + argv if where == "before" else argv + common
    with pytest.raises(Exception, match="missing.h5ad"):  # --traceback: the error itself, not a line
        main(argv)


@pytest.mark.parametrize(("argv", "message"), [
    (["embed", "p.zarr", "--out", "o", "--workers", "0"], "--workers: must be at least 1"),
    (["embed", "p.zarr", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["embed", "p.zarr", "--out", "o", "--format", "csv"], "--format: invalid choice"),
    (["embed", "p.zarr", "--out", "o", "--retries", "-1"], "--retries: must be at least 0"),
    (["embed", "p.zarr"], "needs --out DIR"),
    (["run", "p.zarr", "--out", "o", "--null-size", "1000", "--set", "design.null_size=10"], "disagree"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(main(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_help_states_real_defaults():
    done = subprocess.run(["subcell-scale", "run", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "(default None)" not in done.stdout
    assert "mAP null distribution size (default: the preset's design)" in " ".join(done.stdout.split())
    demo = main_help("demo")
    make = main_help("make-demo-plate")
    for text in ("--scheduler", "--model", "--preset", "--set", "--config"):
        assert text in demo
    # the demo, make-demo-plate and make_demo_plate share their plate sizes
    from subcell_scale.cli._options import default_of
    from subcell_scale.io.demo import layout_for, make_demo_plate

    wells, plates = default_of(make_demo_plate, "n_wells"), default_of(make_demo_plate, "n_plates")
    fields = layout_for("demo").fields_per_well
    for text in (f"wells per plate (default {wells})", f"demo plates (default {plates})",
                 f"fields per well (default {fields})"):
        assert text in " ".join(demo.split())
    for text in (f"(default: {wells}, as the demo)", f"(default: {plates}, as the demo)",
                 f"(default: {fields}, as the demo"):
        assert text in " ".join(make.split())


def main_help(command: str) -> str:
    done = subprocess.run(["subcell-scale", command, "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("options", "message"), [
    ({"device": "tpu"}, "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ({"format": "csv"}, "format must be one of zarr, h5ad"),
    ({"retries": -1}, "retries must be an integer >= 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"plates_from": "no-such-list.txt"}, "--plates-from no-such-list.txt: cannot be read"),
])
def test_run_options_are_checked_when_described(options, message):
    with pytest.raises(ConfigError, match=message):
        describe_run("p.zarr", **options)


def test_plates_from_globs_and_files(tmp_path):
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        (tmp_path / name).mkdir()
    (tmp_path / "plates.txt").write_text("# the screen\na.zarr\n\ns3://bucket/x.zarr\n")
    spec = describe_run(str(tmp_path / "*.zarr"), plates_from=tmp_path / "plates.txt")
    assert spec.plates == (*(str(tmp_path / n) for n in ("a.zarr", "b.zarr", "c.zarr")), str(tmp_path / "a.zarr"),
                           "s3://bucket/x.zarr")
    with pytest.raises(ConfigError, match="no plate matches"):
        describe_run(str(tmp_path / "*.tif"))
    with pytest.raises(ConfigError, match="no plate given"):
        describe_run(None)


def test_a_config_file_error_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("out: run\nset:\n  out_size: [224\n")
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run.yaml: not valid YAML at line" in err


def test_the_description_is_recorded_and_read_back(tmp_path):
    from subcell_scale.runspec import read_description, record_description

    spec = describe_run("p.zarr", preset="jump-cellpainting", out_size=224, **{"design.null_size": 100})
    record_description(spec, [], tmp_path)
    (tmp_path / "metrics").mkdir()
    recorded = read_description(tmp_path / "metrics" / "summary.csv")
    assert recorded.root == tmp_path and recorded.params == spec.params
    assert json.loads((tmp_path / "run.json").read_text())["options"]["plates"] == [spec.plates[0]]
    assert read_description(tmp_path.parent / "elsewhere") is None
