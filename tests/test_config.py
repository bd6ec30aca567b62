"""Configuration: the example file, the environment, and one clear line per mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from botasync import config
from botasync.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "botasync.example.toml"


def _keys(model: type[BaseModel], prefix: str) -> set[str]:
    return {f"{prefix}.{name}" for name in model.model_fields}


def test_example_documents_every_key_with_its_default() -> None:
    """The example file holds every key of every section, each at its default."""
    data = tomllib.loads(EXAMPLE.read_text())
    default = config.Config().model_dump(mode="json")
    for section, model in config.Config.model_fields.items():
        if section in ("handlers", "projects"):  # arrays of tables: examples in comments
            continue
        assert model.annotation is not None
        assert set(data[section]) == set(default[section]), section
        for key, value in data[section].items():
            assert default[section][key] == (value if key != "api_key" else ""), (section, key)
    assert config.load(EXAMPLE, env={}).model_dump() == config.Config().model_dump()


def test_example_handlers_in_comments_are_valid() -> None:
    """The commented handler examples validate when uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# As many handlers"))
    text = "\n".join(
        line[2:] for line in lines[start:]
        if line.startswith("# ") and ("=" in line or line.startswith("# [[handlers]]"))
        and not line.startswith("# The") and "Common keys" not in line
    )
    data = tomllib.loads(text)
    cfg = config.Config.model_validate({"handlers": data["handlers"]})
    assert [h.type for h in cfg.handlers] == ["command", "webhook", "python", "log", "nats"]


def test_example_projects_in_comments_are_valid() -> None:
    """The commented `[[projects]]` example validates when uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[projects]]")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    text = "\n".join(line[2:] for line in lines[start:end] if line.startswith("# "))
    cfg = config.Config.model_validate(tomllib.loads(text))
    assert [v.project for v in cfg.each_project()] == ["production", "staging"]
    assert cfg.for_project("staging").sync.interval_s == 300


def test_env_overrides_file(tmp_path: Path) -> None:
    """BOTA_API_KEY, BOTA_API_URL and BOTASYNC_DB win over the file."""
    f = tmp_path / "c.toml"
    f.write_text('[api]\napi_key = "sk_test_file"\n[database]\npath = "a.db"\n')
    cfg = config.load(f, env={"BOTA_API_KEY": "sk_test_env", "BOTA_API_URL": "http://x/v1/",
                              "BOTASYNC_DB": "b.db"})
    assert cfg.api_key() == "sk_test_env"
    assert cfg.api.base_url == "http://x/v1"
    assert cfg.database.path == "b.db"
    assert config.load(env={"BOTASYNC_CONFIG": str(f)}).api_key() == "sk_test_file"


def test_key_file(tmp_path: Path) -> None:
    """api_key_file is read (relative to the config file) when no key is given."""
    (tmp_path / "key").write_text("sk_test_fromfile\n")
    f = tmp_path / "c.toml"
    f.write_text('[api]\napi_key_file = "key"\n')
    assert config.load(f, env={}).api_key() == "sk_test_fromfile"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api\n", "is not valid TOML"),
        ("[api]\nbogus = 1\n", "[api] bogus: unknown key"),
        ("[api]\ntimeout_s = \"soon\"\n", "[api] timeout_s: Input should be a valid number"),
        ("[sync]\ndetail = \"sometimes\"\n", "[sync] detail: Input should be"),
        ("[sync]\npage_size = 500\n", "[sync] page_size: Input should be less than or equal to 100"),
        ("[api]\nbase_url = \"ftp://x\"\n", "[api] base_url: Value error, must start with http"),
        ("[api]\napi_key_file = \"missing\"\n", "[api] api_key_file:"),
        ("[[handlers]]\nname = \"a\"\ntype = \"carrier-pigeon\"\n", "[[handlers]] #1: type must be"),
        ("[[handlers]]\nname = \"a\"\ntype = \"command\"\n", "[[handlers]] #1 command: Field required"),
        ("[[handlers]]\nname = \"a\"\ntype = \"log\"\n[[handlers]]\nname = \"a\"\ntype = \"log\"\n",
         "handler names must be unique"),
        ("[media]\ntypes = [\"smell\"]\n", "[media] types.0: Input should be"),
        ("nonsense = 1\n", "nonsense: unknown key"),
    ],
)
def test_bad_config_one_line(tmp_path: Path, text: str, message: str) -> None:
    """Every mistake is one line that names the key and the problem."""
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(f, env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_missing_file() -> None:
    """A config file that does not exist is named."""
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/botasync.toml", env={})


def test_redacted_hides_key() -> None:
    """The effective config never shows the key."""
    cfg = config.load(env={"BOTA_API_KEY": "sk_test_secret123"})
    assert "sk_test_secret123" not in str(cfg.redacted())
    assert "sk_test_secret123" not in repr(cfg)
