"""`dmforge data audit`: does the corpus teach every call often enough, and always by the same rule?

A small model learns the mapping from a player's action to a roll from examples. This audit counts
them and looks for the examples that teach two different rules:

- **coverage**: gold calls per tool, per skill, per save, per plain ability check and per condition,
  with the scenarios they come from, against floors (`audit` in the config);
- **quiet turns**: the share of DM turns without a call, per category (a corpus that always calls
  teaches a DM that always calls);
- **cue conflicts**: an action verb in the player's line that the corpus answers with one check
  (`I climb …` → athletics) answered with another somewhere, with file and line, so an author can fix
  one side. A verb whose object decides the check (`look` at a face is insight, at a room perception)
  is documented in the rulebook's table of such verbs (docs/dm-rules.md, "Actions whose object
  decides") with the checks it may lead to;
- **near duplicates**: player lines or DM replies in different files that say nearly the same thing,
  the mark of a template filled in rather than a scene written.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from dmforge.config import AuditConfig
from dmforge.scenarios.model import Scenario, TurnKind
from dmforge.tools.registry import Registry
from dmforge.tools.syntax import ToolCall

# Words between "I" and the action that are not the action: auxiliaries, modals, hedges, adverbs, and the
# closed-class words that follow a verb that was skipped ("I know the hymns").
_NOT_ACTIONS = """
    am 'm m will 'll ll would 'd d can could should must might may do don't dont did not also just then still
    now first quickly carefully slowly quietly gently really try tries tried want wanna need needs have 've ve
    think guess suppose mean reckon wonder know be being gonna going to attempt attempts let lets
    immediately instead again simply calmly silently cautiously swiftly finally are is was were can't won't
    wouldn't couldn't shouldn't didn't isn't aren't wasn't 're 's
    the a an my his her their our your its this that these those it him them me us there here what which who
    and but or so if as at in on of with for from by into onto up down over out off back all both each very
    he she they you we'll we're we've i'll i'm i've how why when where ever never
"""
NOT_ACTIONS = frozenset(_NOT_ACTIONS.split())
# Verbs that move a character into place before the action ("I step up to him and …"): no cue at all.
_STAGING = "step steps walk walks stand stands sit sits stay stop move go head turn lean crouch kneel wait come get"
STAGING = frozenset(_STAGING.split())
BEING = frozenset(("'m", "'re", "am", "are", "was", "were"))
CUE_SUPPORT = 5  # a verb answered this often …
CUE_SHARE = 0.7  # … with one check at least this share of the time is a cue for that check


def action_verbs(line: str) -> list[str]:
    """The actions a player's line takes: the first word after each "I", "we", "and" or "then" that is not an
    auxiliary, a hedge or an adverb (`look` and `climb` in "While she talks, I'll quietly look at her face, then
    climb")."""
    text = re.sub(r"^[^:\n]{1,40}:\s*", "", line.strip(), count=1).lower().replace("\u2019", "'")
    verbs: list[str] = []
    # The subject's own verbs, and the verbs it goes on to with "and" or "then" ("I look him in the eye and lie").
    for match in re.finditer(r"\b(?:i|we|and|then)\b", text):
        words = re.findall(r"[a-z']+", text[match.end() :])[:6]
        # "I'm …" and "we're …" say what the character is, unless they are going to do something.
        being, going = bool(words) and words[0] in BEING, False
        for word in words:
            going = going or word in ("going", "gonna")
            if word in NOT_ACTIONS or word in ("i", "we", "and", "then"):
                continue
            # "I'm not answering yet" takes no action, and "I step up to him" only gets into place.
            if not word.endswith("ing") and word not in STAGING and word not in verbs and (going or not being):
                verbs.append(word)
            break
    return verbs


@dataclass
class Tally:
    calls: int = 0
    scenarios: set[str] = field(default_factory=set)

    def to_json(self) -> dict:
        return {"calls": self.calls, "scenarios": len(self.scenarios)}


@dataclass
class Place:
    file: str
    line: int
    text: str

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "text": self.text}


@dataclass
class AuditReport:
    scenarios: int
    dm_turns: int
    quiet_turns: int
    floors: dict[str, int]
    coverage: dict[str, dict[str, Tally]]  # kind (tool, skill, save, ability, condition) → name → tally
    quiet_per_category: dict[str, tuple[int, int]]  # category → (DM turns, quiet turns)
    conflicts: list[dict]
    duplicates: list[dict]
    rulebook: str | None

    def below_floor(self) -> list[dict]:
        """Every name under its kind's floor (kinds with a floor of 0 are only counted)."""
        out = []
        for kind, names in self.coverage.items():
            floor = self.floors.get(kind, 0)
            for name, tally in names.items():
                if floor and tally.calls < floor:
                    out.append({"kind": kind, "name": name, "calls": tally.calls, "floor": floor})
        return out

    @property
    def passed(self) -> bool:
        return not self.below_floor() and not self.conflicts and not self.duplicates

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "scenarios": self.scenarios,
            "dm_turns": self.dm_turns,
            "quiet_share": self.quiet_turns / max(1, self.dm_turns),
            "floors": self.floors,
            "coverage": {k: {n: t.to_json() for n, t in v.items()} for k, v in self.coverage.items()},
            "below_floor": self.below_floor(),
            "quiet_share_per_category": {
                c: {"dm_turns": n, "quiet_share": q / max(1, n)} for c, (n, q) in self.quiet_per_category.items()
            },
            "cue_conflicts": self.conflicts,
            "conflicting_lines": sum(len(c["places"]) for c in self.conflicts),
            "near_duplicates": self.duplicates,
            "rulebook": self.rulebook,
        }


def call_kinds(call: ToolCall, registry: Registry) -> list[tuple[str, str]]:
    """What a call counts towards: its tool, and the skill, save, ability check or condition it names."""
    out = [("tool", call.name)]
    subject = call.normalized().positional[0] if call.positional else ""
    vocab = registry.vocabularies
    if call.name == "roll":
        if subject in vocab.get("skill", []):
            out.append(("skill", subject))
        elif subject in vocab.get("ability", []):
            out.append(("ability", subject))
        elif subject.endswith(" save") and subject.removesuffix(" save") in vocab.get("ability", []):
            out.append(("save", subject))
    elif call.name == "condition" and subject:
        out.append(("condition", subject))
    return out


def check_of(calls: list[ToolCall], registry: Registry) -> str | None:
    """The skill or ability check a DM turn asks for (saves, dice and combat are not chosen by an action verb)."""
    for call in calls:
        for kind, name in call_kinds(call, registry):
            if kind in ("skill", "ability"):
                return name
    return None


def read_rulebook(path: Path | None) -> dict[str, set[str]]:
    """The rulebook's verbs whose object decides the check: the table headed `| verb | checks | … |`."""
    if path is None or not path.is_file():
        return {}
    documented: dict[str, set[str]] = {}
    in_table = False
    for line in path.read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if not cells:
            in_table = False
            continue
        if [c.lower() for c in cells[:2]] == ["verb", "checks"]:
            in_table = True
            continue
        if in_table and not set(cells[0]) <= set("-: "):
            for verb in re.split(r"[,/]\s*", cells[0].strip("`* ").lower()):
                documented[verb.strip("` ")] = {c.strip("` ").lower() for c in cells[1].split(",") if c.strip()}
    return documented


def cue_conflicts(scenarios: list[Scenario], registry: Registry, documented: dict[str, set[str]]) -> list[dict]:
    """Player lines whose check none of their action verbs explains, grouped by the verb they contradict.

    A verb is a cue when it is answered with one check at least `CUE_SHARE` of the `CUE_SUPPORT` or more
    times it occurs (`climb` → athletics), or when the rulebook lists the checks it may lead to (`look` →
    perception, insight, investigation: what is looked at decides). A line is consistent when one of its
    cue verbs allows its check; otherwise it contradicts its strongest cue, and is listed under it.
    """
    lines: list[tuple[list[str], str, Place]] = []
    counts: dict[str, Counter] = defaultdict(Counter)
    for scenario in scenarios:
        previous = None
        for turn in scenario.turns:
            if turn.kind is TurnKind.DM and previous is not None and previous.kind is TurnKind.USER:
                check = check_of(turn.calls, registry)
                verbs = action_verbs(previous.text) if check else []
                if verbs:
                    lines.append((verbs, check, Place(scenario.path, previous.line, _clip(previous.text))))
                    for verb in verbs:
                        counts[verb][check] += 1
            previous = turn
    allowed: dict[str, set[str]] = {}
    for verb, checks in counts.items():
        total = sum(checks.values())
        check, top = checks.most_common(1)[0]
        if verb in documented:
            allowed[verb] = documented[verb]
        elif total >= CUE_SUPPORT and top / total >= CUE_SHARE:
            allowed[verb] = {check}
    against: dict[str, list[tuple[str, Place]]] = defaultdict(list)
    for verbs, check, place in lines:
        cues = [v for v in verbs if v in allowed]
        if cues and not any(check in allowed[v] for v in cues):
            strongest = max(cues, key=lambda v: sum(counts[v].values()))
            against[strongest].append((check, place))
    return [
        {
            "verb": verb,
            "expected": sorted(allowed[verb]),
            "documented": verb in documented,
            "checks": dict(counts[verb].most_common()),
            "places": [{"check": check, **place.to_json()} for check, place in places],
        }
        for verb, places in sorted(against.items())
    ]


def _words(text: str) -> list[str]:
    text = re.sub(r"\[[^\]\n]*\]", " ", text.lower())
    text = re.sub(r"^[^:\n]{1,40}:\s*", "", text.strip(), count=1)
    return re.findall(r"[a-z0-9']+", text)


def near_duplicates(scenarios: list[Scenario], threshold: float, min_words: int = 8) -> list[dict]:
    """Player lines and DM replies in different files whose word 3-grams overlap by `threshold` (Jaccard) or more.

    An inverted index of 3-grams finds the candidates; 3-grams shared by many texts ("what do you")
    are stock phrases, not evidence, and are left out of the index.
    """
    texts: list[tuple[str, Place, frozenset]] = []
    for scenario in scenarios:
        for turn in scenario.turns:
            if turn.kind not in (TurnKind.USER, TurnKind.DM):
                continue
            words = _words(turn.text)
            if len(words) < min_words:
                continue
            grams = frozenset(zip(words, words[1:], words[2:], strict=False))
            texts.append((turn.kind.value, Place(scenario.path, turn.line, _clip(turn.text)), grams))
    index: dict[tuple, list[int]] = defaultdict(list)
    for i, (_, _, grams) in enumerate(texts):
        for gram in grams:
            index[gram].append(i)
    shared: Counter = Counter()
    for members in index.values():
        if len(members) > 30:
            continue
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                shared[(a, b)] += 1
    found = []
    for (a, b), common in shared.items():
        kind_a, place_a, grams_a = texts[a]
        kind_b, place_b, grams_b = texts[b]
        if kind_a != kind_b or place_a.file == place_b.file:
            continue
        similarity = common / len(grams_a | grams_b)
        if similarity >= threshold:
            found.append(
                {
                    "kind": "player" if kind_a == "user" else "dm",
                    "similarity": round(similarity, 3),
                    "a": place_a.to_json(),
                    "b": place_b.to_json(),
                }
            )
    return sorted(found, key=lambda d: -d["similarity"])


def _clip(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def audit(scenarios: list[Scenario], registry: Registry, config: AuditConfig) -> AuditReport:
    coverage: dict[str, dict[str, Tally]] = {k: {} for k in ("tool", "skill", "save", "ability", "condition")}
    # Every registered tool and every skill and save is listed, so one that is never called shows as 0.
    for name in registry.tools:
        coverage["tool"][name] = Tally()
    for skill in registry.vocabularies.get("skill", []):
        coverage["skill"][skill] = Tally()
    for ability in registry.vocabularies.get("ability", []):
        coverage["save"][f"{ability} save"] = Tally()
    quiet: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    dm_turns = quiet_turns = 0
    for scenario in scenarios:
        for turn in scenario.dm_turns:
            dm_turns += 1
            counts = quiet[scenario.header.category]
            counts[0] += 1
            if not turn.calls:
                quiet_turns += 1
                counts[1] += 1
            for call in turn.calls:
                for kind, name in call_kinds(call, registry):
                    tally = coverage[kind].setdefault(name, Tally())
                    tally.calls += 1
                    tally.scenarios.add(scenario.id)
    rulebook = config.rulebook if config.rulebook and config.rulebook.is_file() else None
    return AuditReport(
        scenarios=len(scenarios),
        dm_turns=dm_turns,
        quiet_turns=quiet_turns,
        floors={
            "tool": config.tool_floor,
            "skill": config.skill_floor,
            "save": config.save_floor,
            "ability": config.ability_floor,
            "condition": config.condition_floor,
        },
        coverage=coverage,
        quiet_per_category={c: (n, q) for c, (n, q) in sorted(quiet.items())},
        conflicts=cue_conflicts(scenarios, registry, read_rulebook(rulebook)),
        duplicates=near_duplicates(scenarios, config.duplicate_similarity),
        rulebook=str(rulebook) if rulebook else None,
    )


def coverage_png(path: Path, report: AuditReport) -> None:
    """Calls per tool, skill, save and ability check, with each kind's floor as a line."""
    from dmforge.plots import figure, save_figure

    kinds = [k for k in ("tool", "skill", "save", "ability") if report.coverage[k]]
    fig = figure(11, 2.2 + 0.22 * sum(len(report.coverage[k]) for k in kinds))
    axes = fig.subplots(len(kinds), 1, gridspec_kw={"height_ratios": [len(report.coverage[k]) + 1 for k in kinds]})
    for ax, kind in zip(axes, kinds, strict=True):
        names = sorted(report.coverage[kind], key=lambda n: report.coverage[kind][n].calls)
        calls = [report.coverage[kind][n].calls for n in names]
        floor = report.floors.get(kind, 0)
        colors = ["#c44e52" if floor and c < floor else "#4c72b0" for c in calls]
        ax.barh(names, calls, color=colors)
        if floor:
            ax.axvline(floor, color="#333", lw=1, ls="--")
        ax.set_title(f"{kind} calls" + (f" (floor {floor})" if floor else ""), fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    save_figure(fig, path)
