"""Check a composed config once, before anything is loaded or written: one line per mistake, naming the key
and the fix (`ablate: eval.k=0: need at least 1; e.g. eval.k=4`).

cell.run, probe.run and build.run call `check` first; the entry point prints the line and exits 2 (a multirun
reports that cell as failed and goes on). What only shows once data or a model is loaded (a coverage larger
than the pool, a teacher prompt too long) fails the cell later, as before.
"""

import dataclasses
import string
import typing
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

# The placeholders each template must use, all of them and no other.
TEMPLATES = {"template": {"prompt", "context"}, "answer_template": {"answer"}}
# key -> (type, smallest allowed value, an example for the message)
SETTINGS = {
    "seed": (int, None, "0"),
    "threads": (int, 1, "1"),
    "eval.k": (int, 1, "4"),
    "eval.batch_size": (int, 1, "64"),
    "eval.max_new_tokens": (int, 1, "256"),
    "eval.temperature": (float, 0, "0.7"),  # 0: greedy
    "eval.top_p": (float, 0, "0.9"),
    "eval.seed": (int, None, "1234"),
    "data.heldout": (int, 0, "32"),
    "coverage.unique": (int, 1, "64"),
    "coverage.copies": (int, 1, "1"),
    "db.heartbeat_seconds": (float, 0, "30"),
    "db.stale_after_seconds": (float, 0, "180"),
}
NULLABLE = {"threads", "coverage.unique"}  # null: torch's default thread count; every problem of the pool
# TRL counts that must be at least 1; the type of every numeric TRL field is read from its config dataclass.
AT_LEAST_ONE = {"max_steps": "20", "per_device_train_batch_size": "16", "num_generations": "8"}


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming the key and the fix."""


def check(cfg: dict) -> None:
    """Raise ConfigError for the first unusable value of a resolved config (a dict; sections a run does not
    use may be absent). Numbers given as strings ("1e-5") are converted in place."""
    if "db" in cfg:
        db_url(cfg["db"]["url"])
    for key, (kind, low, example) in SETTINGS.items():
        section, _, name = key.rpartition(".")
        holder = cfg.get(section) if section else cfg
        if isinstance(holder, dict) and name in holder:
            holder[name] = _number(key, holder[name], kind, low, example, nullable=key in NULLABLE)
    if "eval" in cfg and not 0 < cfg["eval"]["top_p"] <= 1:
        raise ConfigError(f"eval.top_p={cfg['eval']['top_p']}: choose a value in (0, 1]; e.g. eval.top_p=0.9")
    for name, needed in TEMPLATES.items():
        if name in cfg.get("teacher", {}):
            _template(f"teacher.{name}", cfg["teacher"][name], needed)
    path = (cfg.get("model") or {}).get("path")
    if path and Path(str(path)).expanduser().is_file():
        from ablate import models  # torch; only for a file given as the model

        try:
            models.check_gguf(Path(str(path)).expanduser())
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if "trainer" in cfg and "trainer_class" in cfg.get("objective", {}):
        _trainer(cfg)


def db_url(url: str) -> None:
    """db.url must name a database SQLAlchemy can open: a URL, a dialect it knows, a driver that is installed."""
    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as err:  # the same line as record.SchemaCallback's
        raise ConfigError(f"db.url={url}: SQLAlchemy cannot open it ({str(err).strip().splitlines()[0]}); use a URL "
                          "such as sqlite:///db/ablate.sqlite or postgresql+psycopg://USER@HOST/DB") from None


def _number(key: str, value, kind: type, low, example: str, nullable: bool = False):
    """`value` as a number of `kind` (int or float) at least `low`, else ConfigError."""
    if value is None and nullable:
        return value
    number = value
    if isinstance(value, str):  # a quoted number on the command line ('1e-5')
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, float) and kind is int and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or (kind is int and isinstance(number, float)):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{key}={value!r}: not {what}; set it like {key}={example}")
    if low is not None and number < low:
        raise ConfigError(f"{key}={value}: need at least {low}; e.g. {key}={example}")
    return number


def _template(key: str, template, needed: set[str]) -> None:
    example = {"teacher.template": "'{prompt} Hint: {context}'", "teacher.answer_template": "'The answer is {answer}.'"}
    if not isinstance(template, str):
        raise ConfigError(f"{key}={template!r}: not a string; e.g. {key}={example[key]}")
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as err:  # a lone { or }
        raise ConfigError(f"{key}: {err} (write {{{{ and }}}} for literal braces); e.g. {key}={example[key]}") from None
    braces = ", ".join("{" + name + "}" for name in sorted(needed))
    if used - needed:
        raise ConfigError(f"{key}: unknown placeholder {{{sorted(used - needed)[0]}}}; use only {braces} "
                          "(write {{ and }} for literal braces)")
    if needed - used:
        raise ConfigError(f"{key}: missing {{{sorted(needed - used)[0]}}}; it needs {braces}, "
                          f"e.g. {key}={example[key]}")


def _trainer(cfg: dict) -> None:
    """TRL fields: known to the objective's config class (train.trainer_args), numbers where it wants numbers,
    and at least one step, sample and generation."""
    from ablate import train  # TRL; a cell imports it anyway

    try:
        config_cls, _ = train.trainer_args(cfg, "unused")
    except ValueError as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    hints = typing.get_type_hints(config_cls)
    numeric = {}  # field -> (int or float, may be None, an example: TRL's default)
    for field in dataclasses.fields(config_cls):
        kinds = set(typing.get_args(hints[field.name]) or [hints[field.name]])
        if kinds - {type(None)} and kinds - {type(None)} <= {int, float}:
            example = AT_LEAST_ONE.get(field.name) or (str(field.default) if type(field.default) in kinds else "1")
            numeric[field.name] = (float if float in kinds else int, type(None) in kinds, example)
    effective = {}  # field -> (the section that sets it last, its value): trainer < model.trainer < objective.trainer
    for section, values in (("trainer", cfg["trainer"]), ("model.trainer", cfg["model"].get("trainer")),
                            ("objective.trainer", cfg["objective"]["trainer"])):
        for name in list(values or {}):
            if name in numeric:
                kind, nullable, example = numeric[name]
                values[name] = _number(f"{section}.{name}", values[name], kind, None, example, nullable)
                effective[name] = (section, values[name])
    for name, example in AT_LEAST_ONE.items():
        if name in effective and effective[name][1] is not None:
            section, value = effective[name]
            _number(f"{section}.{name}", value, int, 1, example)
