"""Command-line plumbing shared by the stage scripts: common flags, config files, resolved-config output.

Every stage takes ``--dataset --data-root --split --out --device --seed --config``. A config file (JSON or YAML)
supplies defaults by flag name (``data_root`` or ``data-root``); flags given on the
command line override it. The same concept has the same flag in every stage: a model is ``--global-model`` or
``--spatial-model`` (a checkpoint file or a training run folder, default ``runs/default/<kind>/checkpoints/last.pt``),
a (lam, mu) pair is ``--<what>-params LAM MU`` (:func:`lam_mu`), pairs are
limited by ``--max-pairs``, figures by ``--figures`` and ``--resume`` continues the run in ``--out``.

A config file's values go through the same conversion as the flags' (type, choices, number of values; a switch
takes only true or false). :func:`run_stage` holds the output folder's lock while the stage runs (see
:mod:`.run_folder`) and turns bad input into exit code 2 with a one-line message.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..data import registry
from ..data.file_limits import DEFAULT_MAX_VOXELS, voxel_limit
from ..data.pair_dataset import EmptySplitError
from ..files import atomic_write_json, software_versions
from ..models.checkpoints import MODEL_TYPES
from .run_folder import OutputLock, check_owner

__all__ = [
    "HelpFormatter",
    "add_data_args",
    "add_run_args",
    "add_model_arg",
    "seed_value",
    "default_checkpoint",
    "lam_mu",
    "parse_args_with_config",
    "flag_actions",
    "flag_value",
    "dataset_options",
    "resolve_data_root",
    "open_dataset",
    "error_message",
    "output_folder",
    "run_stage",
    "write_config",
    "load_config_file",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in ``--help`` and keep the description's line breaks."""


def add_data_args(parser: argparse.ArgumentParser, split: str = "train") -> None:
    """Flags that choose the data: dataset name, root, split and loader options."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="phantom", help="dataset name: nlst, lungct, acdc, phantom, or pairs (your "
                                                            "own files listed in --pairs-csv)")
    group.add_argument("--data-root", default=None, help="dataset folder (its layout: README, Data)")
    group.add_argument("--pairs-csv", default=None, metavar="FILE",
                       help="--dataset pairs: the CSV listing fixed, moving (and optional labels, keypoints, split, "
                            "pair_id) files of any format; relative paths are read from its folder")
    group.add_argument("--split", default=split, help="split to use: train, val or test")
    group.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                       help="2 for the documented 2D mode of a 3D dataset (default: the data's own)")
    group.add_argument("--image-size", type=int, nargs="+", default=None,
                       help="crop/pad every image to this shape (voxels, one value per axis)")
    group.add_argument("--target-spacing", type=float, nargs="+", default=None,
                       help="resample every image to this spacing (mm, one value per axis)")
    group.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra keyword option of the dataset class (VALUE parsed as JSON when possible); "
                            "repeatable")
    group.add_argument("--no-data-scan", dest="data_scan", action="store_false",
                       help="do not open every file of the dataset when it is opened (for very large datasets); each "
                            "pair's files are then checked when the pair is loaded")
    group.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS, metavar="N",
                       help="refuse an image file whose header declares more voxels than N, before reading it")


def seed_value(text: str) -> int:
    """A ``--seed``: a whole number that every random generator takes (0 to 2**32 - 1)."""
    seed = int(text)
    if not 0 <= seed < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must lie in 0..{2 ** 32 - 1}, got {text}")
    return seed


def add_run_args(parser: argparse.ArgumentParser, out: str, dry_run: bool = False) -> None:
    """Flags every stage shares: output folder, device, seed and config file; with ``dry_run`` also ``--dry-run``
    (the stage must then honour it: plan printed, nothing written)."""
    group = parser.add_argument_group("run")
    group.add_argument("--out", default=out, help="output folder")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    group.add_argument("--seed", type=seed_value, default=0, help="random seed (0 to 2**32 - 1)")
    group.add_argument("--config", default=None, help="JSON or YAML file of option defaults (flags override it)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its files are removed once every input is checked); "
                            "without it a finished run is continued only with --resume")
    if dry_run:
        group.add_argument("--dry-run", action="store_true",
                           help="resolve the options, open the data, build the model, time a short warm-up and print "
                                "the plan (pairs, steps, parameters, time, peak memory); writes nothing")


def default_checkpoint(kind: str) -> str:
    """Where a model flag looks by default: the last checkpoint of the ``runs/default/<kind>`` training run."""
    return f"runs/default/{kind}/checkpoints/last.pt"


def add_model_arg(group: argparse._ArgumentGroup, kind: str, what: str) -> None:
    """``--global-model`` or ``--spatial-model`` (dest ``global_model``/``spatial_model``): a checkpoint file or a
    training run folder (read as its ``checkpoints/last.pt``). ``what`` says what the stage uses it for."""
    if kind not in MODEL_TYPES:
        raise ValueError(f"kind must be one of {MODEL_TYPES}, got {kind!r}")
    group.add_argument(f"--{kind}-model", dest=f"{kind}_model", default=default_checkpoint(kind), metavar="CHECKPOINT",
                       help=f"{kind} model checkpoint, or a training run folder (its checkpoints/last.pt), {what}")


def lam_mu(values: Sequence[float], flag: str) -> tuple[float, float]:
    """A ``LAM MU`` pair of a ``--*-params`` flag: ``lam, mu >= 0`` with ``lam + mu <= 1``, else ValueError."""
    lam, mu = (float(v) for v in values)
    if not (lam >= 0 and mu >= 0 and lam + mu <= 1):
        raise ValueError(f"{flag} {lam:g} {mu:g}: need lam, mu >= 0 with lam + mu <= 1")
    return lam, mu


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping of option names to values."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: file not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path}: not UTF-8 text ({error})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # noqa: BLE001 - any parse error is reported with the file name
        raise ValueError(f"--config {path}: cannot parse ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    # A resolved config.json of an earlier run nests the options; accept it as a template.
    options = data.get("options", data)
    if not isinstance(options, dict):
        raise ValueError(f"--config {path}: 'options' must be a mapping of option names to values, got "
                         f"{json.dumps(options, default=str)}")
    return dict(options)


_SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options by dest (``--help`` left out): the one place that reads argparse's action list."""
    return {action.dest: action for action in parser._actions if not isinstance(action, argparse._HelpAction)}


def _config_names(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, bool]]:
    """Every name a config key may use for a flag: its dest and each ``--`` option string (``--model`` ->
    ``global_model``), with whether the name negates the flag (``no_hd95``, or the flag of a ``store_false``)."""
    actions = flag_actions(parser)
    names = {dest: (action, False) for dest, action in actions.items()}
    for action in actions.values():
        for flag in action.option_strings:
            if flag.startswith("--"):
                negative = isinstance(action, argparse._StoreFalseAction) or (
                    isinstance(action, argparse.BooleanOptionalAction) and flag.startswith("--no-"))
                names.setdefault(flag[2:].replace("-", "_"), (action, negative))
    return names


def flag_value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str,
               negative: bool = False) -> Any:
    """``value`` (a config file's or a Python caller's) as ``action``'s flag would give it: the same type, choices
    and number of values; a switch takes only a bool (``negative``: the name negates the flag). ValueError starting
    with ``where`` otherwise."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(action, _SWITCHES):
        if not isinstance(value, bool):
            raise ValueError(f"{where} is a switch: give true or false, got {value!r}")
        return value != negative  # the dest's value: a negating name (no_hd95: true) stores False
    if not isinstance(action, (argparse._StoreAction, argparse._AppendAction)):
        raise ValueError(f"{where} cannot be set in a config file")
    if value is None:
        if action.default is None:
            return None
        raise ValueError(f"{where} cannot be null (its default is {action.default!r})")
    single = action.nargs in (None, "?") and not isinstance(action, argparse._AppendAction)
    if single and isinstance(value, (list, dict)):
        raise ValueError(f"{where} takes one value, got {value!r}")
    values = [value] if single or not isinstance(value, list) else value
    if isinstance(action.nargs, int) and len(values) != action.nargs:
        raise ValueError(f"{where} takes {action.nargs} values, got {value!r}")
    if not values and action.nargs == "+":
        raise ValueError(f"{where} takes at least one value, got an empty list")
    strings = []
    for item in values:
        item = os.fspath(item) if isinstance(item, os.PathLike) else item
        if isinstance(item, (bool, list, dict)) or item is None:
            raise ValueError(f"{where}: expected {'a number' if action.type in (int, float) else 'a string'}, "
                             f"got {json.dumps(item)}")
        strings.append(str(item))
    try:
        if isinstance(action, argparse._AppendAction):
            return [parser._get_values(action, [string]) for string in strings]
        return parser._get_values(action, strings)
    except argparse.ArgumentError as error:
        raise ValueError(f"{where}: {error.message}") from None


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when ``--config`` is given, its values become defaults that explicit flags override.

    Each value is converted and checked as the flag's own value would be (type, choices, number of values, a
    switch only true or false), so a config file cannot give a value the command line would refuse.
    """
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return args
    names = _config_names(parser)
    defaults = {}
    for key, value in load_config_file(args.config).items():
        name = str(key).replace("-", "_")
        if name == "config":
            continue
        if name not in names:
            raise ValueError(f"--config {args.config}: unknown option {key!r}")
        action, negative = names[name]
        defaults[action.dest] = flag_value(parser, action, value, f"--config {args.config}: {str(key)!r}",
                                             negative)
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options for :func:`~..data.registry.get_dataset` from the data flags."""
    options: dict[str, Any] = {}
    if args.ndim is not None:
        options["ndim"] = args.ndim
    if args.image_size is not None:
        options["shape"] = tuple(args.image_size)
    if args.target_spacing is not None:
        options["spacing"] = tuple(args.target_spacing)
    for item in args.dataset_option or []:
        if "=" not in item:
            raise ValueError(f"--dataset-option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def resolve_data_root(args: argparse.Namespace) -> None:
    """``--pairs-csv`` is the data root of ``--dataset pairs`` (and needs it): set ``args.data_root`` from it, so
    that every stage records and compares one data location. ValueError for contradicting flags."""
    csv_file = getattr(args, "pairs_csv", None)
    if csv_file is None:
        return
    if str(args.dataset).lower() != "pairs":
        raise ValueError(f"--pairs-csv {csv_file} lists the pairs of --dataset pairs, got --dataset {args.dataset}")
    if args.data_root is not None and Path(args.data_root).resolve() != Path(csv_file).resolve():
        raise ValueError(f"--dataset pairs: give --pairs-csv {csv_file} or --data-root {args.data_root}, not both")
    args.data_root = csv_file


def open_dataset(args: argparse.Namespace, split: str | None = None) -> Any:
    """The ``split`` (default ``--split``) of the dataset named by the data flags.

    A dataset error is re-raised with the data flags that were given, so the user sees which option to fix: an
    :class:`~..data.pair_dataset.EmptySplitError` (the split has no pairs) as such, any other problem as a
    ValueError.
    """
    split = args.split if split is None else split
    resolve_data_root(args)
    if args.data_root is None:
        if str(args.dataset).lower() == "pairs":
            raise ValueError("--dataset pairs needs --pairs-csv FILE (the CSV that lists your pairs)")
        raise ValueError(f"--data-root is required: the {args.dataset} dataset folder")
    try:
        return registry.get_dataset(args.dataset, args.data_root, split, scan=getattr(args, "data_scan", True),
                                    **dataset_options(args))
    except (ValueError, FileNotFoundError) as error:  # a missing root or description file is bad input too
        root_flag = "--pairs-csv" if getattr(args, "pairs_csv", None) else "--data-root"
        given = [f"--dataset {args.dataset}", f"{root_flag} {args.data_root}", f"split {split!r}"]
        for flag, value in (("--ndim", args.ndim), ("--image-size", args.image_size),
                            ("--target-spacing", args.target_spacing), ("--dataset-option", args.dataset_option)):
            if value:
                given.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
        kind = EmptySplitError if isinstance(error, EmptySplitError) else ValueError
        raise kind(f"{', '.join(given)}: {error}") from error


@contextlib.contextmanager
def output_folder(args: argparse.Namespace, stage: str) -> Iterator[None]:
    """Hold the lock of ``--out`` and check that no other stage owns it (:mod:`.run_folder`).

    A dry run (``--dry-run``) writes nothing and takes no lock; nor do the other ranks of a distributed run (rank
    0 holds it for them).
    """
    if getattr(args, "dry_run", False) or os.environ.get("RANK", "0") != "0":
        yield
        return
    with OutputLock(args.out) as lock:
        if lock.taken_over:
            print(f"notice: --out {args.out}: took over the lock of process {lock.taken_over}, which ended without "
                  f"releasing it", flush=True)
        check_owner(args.out, stage)
        yield


def error_message(error: BaseException) -> str:
    """One line for ``error``: an OSError as ``file: reason``; the original message of an error a DataLoader worker
    re-raised (the last line of the worker's traceback); line breaks of other messages joined."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    text = str(error).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return re.sub(r"\s*\n\s*", " ", text)


def run_stage(parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], Any],
              argv: Sequence[str] | None = None, errors: tuple[type[Exception], ...] = (ValueError,),
              stage: str | None = None) -> int:
    """Parse ``argv`` (with ``--config``), call ``work(args)`` and return the exit code.

    With ``stage`` (the stage's name), ``work`` runs while this process holds the lock of ``--out``
    (:func:`output_folder`); images are read under the voxel limit of ``--max-voxels`` where the stage has it. ``errors`` (bad input) and a file that cannot be read or written (OSError) exit with
    code 2 and a one-line message on stderr.
    """
    try:
        args = parse_args_with_config(parser, argv)
        with voxel_limit(getattr(args, "max_voxels", None)), \
                output_folder(args, stage) if stage is not None else contextlib.nullcontext():
            result = work(args)
    except (*errors, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error_message(error)}\n")
    print(f"done: {result}")
    return 0


def write_config(out: str | Path, args: argparse.Namespace, **extra: Any) -> Path:
    """Write ``out/config.json``: every resolved option, extra facts (dataset, classes) and software versions."""
    config = {"options": vars(args).copy(), **extra, "software": software_versions()}
    return atomic_write_json(config, Path(out) / "config.json")
