"""The segmentation config: pydantic models, read from YAML, errors with line numbers.

A config says, per segmentation, which segments exist and how a customer
lands in one: ordered rules (lifecycle, value) or named cluster prototypes
(behaviour), plus the hysteresis that keeps customers from flapping.

A bad config never reaches the worker: :func:`parse_config` raises
:class:`ConfigError` naming the file, the line and the problem.

>>> cfg = default_config()
>>> cfg.lifecycle.segments
('new', 'active', 'at_risk', 'dormant', 'churned')
>>> bad = '''
... lifecycle:
...   segments: [active]
...   default: active
...   rules:
...     - id: lapsed
...       segment: active
...       when:
...         - {feature: purchses_90d, op: ">=", value: 1}
... '''
>>> parse_config(bad, "segments.yaml")
Traceback (most recent call last):
...
segmenter.config.ConfigError: segments.yaml line 9: lifecycle.rules[0].when[0].feature: unknown feature 'purchses_90d' (did you mean 'purchases_90d'?)
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from features.catalogue import FEATURE_NAMES, MODEL_FEATURE_NAMES
from features.traits import TEXT_TRAIT_FEATURES, TRAIT_FEATURES

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}

CHURN_FEATURE = "churn_propensity"
ENGAGEMENT_FEATURE = "engagement_risk"
ACTIVE_FEATURE = "p_active"
# Features a lifecycle rule may test: the catalogue, state and model features.
RULE_FEATURES: tuple[str, ...] = (*FEATURE_NAMES, *MODEL_FEATURE_NAMES)
# Value rules may also test the RFM scores (1..5) computed by segmenter.value.
RFM_SCORES: tuple[str, ...] = ("recency_score", "frequency_score", "monetary_score")
VALUE_RULE_FEATURES: tuple[str, ...] = RULE_FEATURES + RFM_SCORES

# Persona rules may also test the profile traits (features.traits): numbers (age,
# marketing_consent) as any feature, texts (country, region, plan, signup_channel)
# with ==, != and the set tests in / not_in.
PERSONA_RULE_FEATURES: tuple[str, ...] = RULE_FEATURES + TRAIT_FEATURES

COMPARISONS = (">=", ">", "<=", "<", "==", "!=")
NULL_TESTS = ("is_null", "not_null")
SET_TESTS = ("in", "not_in")
TEXT_OPS = ("==", "!=", *SET_TESTS, *NULL_TESTS)
Op = Literal[">=", ">", "<=", "<", "==", "!=", "is_null", "not_null", "in", "not_in"]
SEGMENTATIONS = ("lifecycle", "behaviour", "value", "persona")
MAX_CLUSTERS = 8  # stable naming tries every permutation: 8! = 40,320 is still instant

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_ID_PATTERN = r"^[a-z][a-z0-9_]*$"


class ConfigError(ValueError):
    """A segmentation config that cannot be used; ``issues`` holds every problem found."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class ConfigIssue:
    source: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source} line {self.line}: {where}{self.message}"


def _issue(message: str, *path: str | int) -> PydanticCustomError:
    """A validation error that points below the model raising it (``path``)."""
    return PydanticCustomError("config_issue", "{message}", {"message": message, "path": path})


def _check_feature(name: str, allowed: tuple[str, ...]) -> str:
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PydanticCustomError("unknown_feature", "unknown feature '{name}'{hint}", {"name": name, "hint": hint})
    return name


# -- rules ---------------------------------------------------------------------


class Condition(BaseModel):
    """``feature op value``. Comparisons with a None feature value are false.

    Text features (the persona rules' traits) take ``==``/``!=`` with a text, or
    ``in``/``not_in`` with a list of texts; numbers take a number.
    """

    model_config = _FROZEN
    allowed_features: ClassVar[tuple[str, ...]] = RULE_FEATURES
    text_features: ClassVar[tuple[str, ...]] = ()

    feature: str
    op: Op
    value: float | str | tuple[str, ...] | None = None

    @field_validator("feature")
    @classmethod
    def _known_feature(cls, name: str) -> str:
        return _check_feature(name, cls.allowed_features)

    @model_validator(mode="after")
    def _value_matches_op(self) -> Condition:
        if self.op in NULL_TESTS:
            if self.value is not None:
                raise _issue(f"operator '{self.op}' takes no value", "value")
            return self
        if self.value is None:
            raise _issue(f"operator '{self.op}' needs a value", "value")
        if self.feature in self.text_features:
            if self.op not in TEXT_OPS:
                raise _issue(f"'{self.feature}' is a text: use one of {', '.join(TEXT_OPS)}", "op")
            if self.op in SET_TESTS and not (isinstance(self.value, tuple) and self.value):
                raise _issue(f"operator '{self.op}' needs a list of texts", "value")
            if self.op not in SET_TESTS and not isinstance(self.value, str):
                raise _issue(f"operator '{self.op}' on '{self.feature}' needs a text", "value")
            return self
        if self.op in SET_TESTS:
            raise _issue(f"operator '{self.op}' applies to text traits ({', '.join(TEXT_TRAIT_FEATURES)}) only", "op")
        if not isinstance(self.value, float):
            raise _issue(f"'{self.feature}' is a number: the value must be a number", "value")
        return self

    @property
    def number(self) -> float | None:
        """The value, when it is a number (what clock and derived features compare with)."""
        return self.value if isinstance(self.value, float) else None

    def holds(self, features: Mapping[str, float | str | None]) -> bool:
        """Does the condition hold for ``features``?

        >>> Condition(feature="tenure_days", op="<", value=14).holds({"tenure_days": 3.0})
        True
        >>> Condition(feature="tenure_days", op="<", value=14).holds({"tenure_days": None})
        False
        >>> PersonaCondition(feature="country", op="in", value=["DE", "AT"]).holds({"country": "AT"})
        True
        """
        v = features.get(self.feature)
        if self.op == "is_null":
            return v is None
        if self.op == "not_null":
            return v is not None
        if v is None:
            return False
        value = self.value
        if isinstance(value, tuple):
            return (v in value) == (self.op == "in")
        if isinstance(v, str) or isinstance(value, str):
            return (v == value) == (self.op == "==") if self.op in ("==", "!=") else False
        assert value is not None  # a comparison has a value (_value_matches_op)
        return _COMPARE[self.op](v, value)


class ValueCondition(Condition):
    allowed_features: ClassVar[tuple[str, ...]] = VALUE_RULE_FEATURES


class PersonaCondition(Condition):
    allowed_features: ClassVar[tuple[str, ...]] = PERSONA_RULE_FEATURES
    text_features: ClassVar[tuple[str, ...]] = tuple(TEXT_TRAIT_FEATURES)


class Rule(BaseModel):
    """Puts a customer in ``segment`` when every ``when`` condition holds and,
    if ``any`` is given, at least one of those holds too.

    ``stay`` is hysteresis: a customer this rule placed keeps its segment while
    every ``stay`` condition holds (and no earlier rule matches), even after
    ``when`` stops holding. Enter at one threshold, leave at a laxer one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    id: str = Field(pattern=_ID_PATTERN)
    segment: str
    when: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = Field(default=(), alias="any")
    stay: tuple[Condition, ...] = ()

    @model_validator(mode="after")
    def _has_conditions(self) -> Rule:
        if not self.when and not self.any_of:
            raise _issue("a rule needs 'when' or 'any' conditions (use 'default' for the catch-all)", "when")
        return self

    def matches(self, features: Mapping[str, float | str | None]) -> bool:
        return all(c.holds(features) for c in self.when) and (not self.any_of or any(c.holds(features) for c in self.any_of))

    def stays(self, features: Mapping[str, float | str | None]) -> bool:
        """Whether a customer this rule placed keeps its segment (``stay`` given and all hold)."""
        return bool(self.stay) and all(c.holds(features) for c in self.stay)

    def conditions(self) -> tuple[Condition, ...]:
        return self.when + self.any_of + self.stay


class ValueRule(Rule):
    when: tuple[ValueCondition, ...] = ()
    any_of: tuple[ValueCondition, ...] = Field(default=(), alias="any")


class PersonaRule(Rule):
    when: tuple[PersonaCondition, ...] = ()
    any_of: tuple[PersonaCondition, ...] = Field(default=(), alias="any")
    stay: tuple[PersonaCondition, ...] = ()


class RuleSet(BaseModel):
    """Segments of one rule-driven segmentation; the first matching rule wins."""

    model_config = _FROZEN

    segments: tuple[str, ...] = Field(min_length=1)
    default: str
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> RuleSet:
        if len(set(self.segments)) != len(self.segments):
            raise _issue("segments must be unique", "segments")
        if self.default not in self.segments:
            raise _issue(f"default segment '{self.default}' is not one of segments {list(self.segments)}", "default")
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.segment not in self.segments:
                raise _issue(f"segment '{rule.segment}' is not one of segments {list(self.segments)}", "rules", i, "segment")
            if rule.id in seen:
                raise _issue(f"duplicate rule id '{rule.id}'", "rules", i, "id")
            seen.add(rule.id)
        return self


class LifecycleConfig(RuleSet):
    pass


class PersonaConfig(RuleSet):
    """Who a customer is: ordered rules over profile traits (``age``, ``country``,
    ``region``, ``plan``, ``signup_channel``, ``marketing_consent``) combined with
    behaviour, value and model features. A config without a ``persona`` section
    puts everyone in ``everyone``."""

    segments: tuple[str, ...] = Field(("everyone",), min_length=1)
    default: str = "everyone"
    rules: tuple[PersonaRule, ...] = ()


# -- behaviour -------------------------------------------------------------------


class KMeansParams(BaseModel):
    """River ``cluster.KMeans`` parameters (``halflife``: how far a centre moves
    towards each point; ``sigma``: spread of random initial positions)."""

    model_config = _FROZEN

    halflife: float = Field(0.02, gt=0, le=1)
    sigma: float = Field(0.5, gt=0)
    seed: int = 42


class BehaviourConfig(BaseModel):
    """Online k-means over log-scaled, standardised features; clusters are
    named after the nearest prototype (a profile of z-scores)."""

    model_config = _FROZEN

    n_clusters: int = Field(4, ge=2, le=MAX_CLUSTERS)
    features: tuple[str, ...] = Field(min_length=1)
    kmeans: KMeansParams = KMeansParams()
    prototypes: dict[str, dict[str, float]]
    rename_every: int = Field(500, ge=1, description="learned points between re-checks of the cluster names")
    rename_margin: float = Field(0.2, ge=0, lt=1, description="a new naming must be this much closer (relative) to replace the old one")

    @field_validator("features")
    @classmethod
    def _known_features(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            _check_feature(name, FEATURE_NAMES)
        if len(set(names)) != len(names):
            raise PydanticCustomError("duplicate", "features must be unique")
        return names

    @model_validator(mode="after")
    def _prototypes_fit(self) -> BehaviourConfig:
        if len(self.prototypes) != self.n_clusters:
            raise _issue(f"{len(self.prototypes)} prototypes for n_clusters={self.n_clusters}: every cluster needs exactly one name", "prototypes")
        for name, profile in self.prototypes.items():
            if not _matches(name, _ID_PATTERN):
                raise _issue(f"prototype name '{name}' must be lower_snake_case", "prototypes", name)
            for feature in profile:
                if feature not in self.features:
                    raise _issue(f"'{feature}' is not one of the clustering features {list(self.features)}", "prototypes", name, feature)
        return self


# -- value -----------------------------------------------------------------------


Boundaries = tuple[float, float, float, float]


class ColdStartBoundaries(BaseModel):
    """Quintile boundaries used until the population is big enough to learn them."""

    model_config = _FROZEN

    recency: Boundaries = (14.0, 30.0, 60.0, 120.0)
    frequency: Boundaries = (1.0, 2.0, 4.0, 8.0)
    monetary: Boundaries = (20.0, 60.0, 150.0, 400.0)

    @field_validator("recency", "frequency", "monetary")
    @classmethod
    def _ascending(cls, b: Boundaries) -> Boundaries:
        if list(b) != sorted(b):
            raise PydanticCustomError("not_ascending", "boundaries must be ascending")
        return b


class ValueConfig(RuleSet):
    """RFM: each of recency, frequency, monetary scored 1..5 (5 best) against
    the population's streaming quintiles, then ordered rules over the scores."""

    recency: str = "days_since_last_purchase"
    frequency: str = "purchases_total"
    monetary: str = "revenue_total"
    min_population: int = Field(200, ge=5, description="purchasers seen before learned quintiles replace cold_start_boundaries")
    cold_start_boundaries: ColdStartBoundaries = ColdStartBoundaries()
    rules: tuple[ValueRule, ...] = ()

    @field_validator("recency", "frequency", "monetary")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_feature(name, FEATURE_NAMES)


# -- hysteresis --------------------------------------------------------------------


class HysteresisPolicy(BaseModel):
    """A customer who moved may not move again within ``min_dwell_seconds``,
    except into an ``urgent`` segment; ``margin`` (behaviour only) requires the
    new cluster to be that much closer, relatively, than the current one."""

    model_config = _FROZEN

    min_dwell_seconds: float = Field(0, ge=0)
    urgent: tuple[str, ...] = ()
    margin: float = Field(0.0, ge=0, lt=1)

    @property
    def min_dwell_ms(self) -> int:
        return int(self.min_dwell_seconds * 1000)


class HysteresisConfig(BaseModel):
    model_config = _FROZEN

    lifecycle: HysteresisPolicy = HysteresisPolicy()
    behaviour: HysteresisPolicy = HysteresisPolicy()
    value: HysteresisPolicy = HysteresisPolicy()
    persona: HysteresisPolicy = HysteresisPolicy()


# -- churn model ------------------------------------------------------------------


class ChurnConfig(BaseModel):
    """The purchase-rhythm model behind ``churn_propensity`` (segmenter/churn.py)."""

    model_config = _FROZEN

    horizon_days: float = Field(90.0, gt=0, description="churn_propensity = P(no purchase in this many days)")
    sample_size: int = Field(5000, ge=10, description="customers kept to fit the population parameters")
    min_customers: int = Field(200, ge=10, description="buyers in the sample before the first fit (the prior holds until then)")
    min_history_days: float = Field(
        30.0, ge=0, description="the sampled buyers' median age (days since first purchase) before the first fit: days-old histories show no dropouts"
    )


# -- the whole config ----------------------------------------------------------------


class SegmentationConfig(BaseModel):
    model_config = _FROZEN

    version: Literal[1] = 1
    lifecycle: LifecycleConfig
    behaviour: BehaviourConfig
    value: ValueConfig
    persona: PersonaConfig = PersonaConfig()
    hysteresis: HysteresisConfig = HysteresisConfig()
    churn: ChurnConfig = ChurnConfig()

    @model_validator(mode="after")
    def _urgent_segments_exist(self) -> SegmentationConfig:
        for name in SEGMENTATIONS:
            known = self.segments_of(name)
            for j, seg in enumerate(getattr(self.hysteresis, name).urgent):
                if seg not in known:
                    raise _issue(f"urgent segment '{seg}' is not a {name} segment {list(known)}", "hysteresis", name, "urgent", j)
        return self

    def segments_of(self, segmentation: str) -> tuple[str, ...]:
        """Every segment of ``segmentation`` (lifecycle, behaviour, value, persona)."""
        if segmentation == "behaviour":
            return tuple(self.behaviour.prototypes)
        rules: RuleSet = getattr(self, segmentation)
        return rules.segments

    def to_yaml(self) -> str:
        """YAML that :func:`parse_config` reads back to an equal config."""
        text: str = yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)
        return text


def _matches(text: str, pattern: str) -> bool:
    return re.fullmatch(pattern, text) is not None


# -- loading, with line numbers ------------------------------------------------------


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_yaml(text: str, source_name: str, model: type[ModelT], shape_hint: str, context: dict[str, Any] | None = None) -> ModelT:
    """Parse YAML ``text`` and validate it with the pydantic ``model``; every
    problem becomes a :class:`ConfigIssue` naming its line (syntax errors,
    duplicate keys, a top level that is not a mapping, validation errors)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigIssue(source_name, line, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source_name, 1, "", f"YAML error: {exc}")]) from None
    if root is not None:
        duplicates = list(_duplicate_keys(root, ()))
        if duplicates:
            raise ConfigError([ConfigIssue(source_name, line, _dotted(path), f"duplicate key '{path[-1]}'") for path, line in duplicates])
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        raise ConfigError([ConfigIssue(source_name, line, "", shape_hint)])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False, include_input=False):
            path = tuple(err["loc"]) + tuple((err.get("ctx") or {}).get("path", ()))
            issues.append(ConfigIssue(source_name, _line_of(root, path), _dotted(path), err["msg"]))
        raise ConfigError(issues) from None


def read_config_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), 0, "", f"cannot read: {exc.strerror or exc}")]) from None


def parse_config(text: str, source_name: str = "<config>") -> SegmentationConfig:
    """Validate the YAML ``text``; raise :class:`ConfigError` naming lines."""
    return validate_yaml(text, source_name, SegmentationConfig, "the config must be a YAML mapping (lifecycle, behaviour, value, persona, hysteresis)")


def load_config(path: str | Path) -> SegmentationConfig:
    """Read and validate the YAML config at ``path``."""
    path = Path(path)
    return parse_config(read_config_text(path), path.name)


DEFAULT_CONFIG_NAME = "default_segments.yaml"


@functools.lru_cache(maxsize=1)
def default_config() -> SegmentationConfig:
    """The config shipped with segflow (``segmenter/default_segments.yaml``)."""
    # Next to this module (package data); importlib.resources would also work
    # but trips over stale editable installs that see segmenter/ as a namespace.
    return parse_config(default_config_text(), DEFAULT_CONFIG_NAME)


def default_config_text() -> str:
    """The YAML of :func:`default_config`, comments and all (a starting point for a candidate)."""
    return (Path(__file__).parent / DEFAULT_CONFIG_NAME).read_text()


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(root: yaml.Node | None, path: tuple[str | int, ...]) -> int:
    """1-based line of the deepest YAML node that ``path`` reaches.

    A key's own line is used (a block value starts on the next line); a
    missing field stops at the mapping that lacks it, so the line is the one
    of the object the field should be in.
    """
    if root is None:
        return 1
    node, mark = root, root.start_mark
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if found is None:
                break
            mark, node = found[0].start_mark, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    line: int = mark.line
    return line + 1


def _duplicate_keys(node: yaml.Node, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], int]]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            if k in seen:
                yield (*path, k), key.start_mark.line + 1
            seen.add(k)
            yield from _duplicate_keys(value, (*path, k))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, i))
