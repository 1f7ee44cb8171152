"""Galaxy Zoo decision trees as data: questions, their answer columns and the parent answer that gates them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One decision-tree question.

    Attributes:
        name: question name (e.g. ``Class1``).
        answers: target column of each answer, in output order.
        parent: the answer column whose value scales this question (None for a root question).
    """

    name: str
    answers: tuple[str, ...]
    parent: str | None = None


@dataclass(frozen=True)
class DecisionTree:
    """A Galaxy Zoo decision tree; ``questions`` are in an order where every parent comes first."""

    name: str
    questions: tuple[Question, ...]

    @property
    def columns(self) -> list[str]:
        """All answer columns in output order."""
        return [a for q in self.questions for a in q.answers]

    def slices(self) -> list[tuple[int, int, int | None]]:
        """For each question: (start, stop) of its answers in the output vector and the parent's index."""
        cols = self.columns
        out: list[tuple[int, int, int | None]] = []
        start = 0
        for q in self.questions:
            stop = start + len(q.answers)
            out.append((start, stop, cols.index(q.parent) if q.parent else None))
            start = stop
        return out


def _kaggle_tree() -> DecisionTree:
    sizes = {1: 3, 2: 2, 3: 2, 4: 2, 5: 4, 6: 2, 7: 3, 8: 7, 9: 3, 10: 3, 11: 6}
    parents = {2: "Class1.2", 3: "Class2.2", 4: "Class2.2", 5: "Class2.2", 7: "Class1.1", 8: "Class6.1",
               9: "Class2.1", 10: "Class4.1", 11: "Class4.1"}
    questions = tuple(
        Question(f"Class{q}", tuple(f"Class{q}.{a}" for a in range(1, n + 1)), parents.get(q)) for q, n in sizes.items()
    )
    return DecisionTree("kaggle_galaxy_zoo", questions)


KAGGLE_TREE = _kaggle_tree()
"""The 37-output Kaggle Galaxy Zoo (GZ2) tree of Dieleman et al. 2015 (parents as in ../shared/data/README.md)."""


def questions_from_columns(columns: list[str], sep: str = "_") -> DecisionTree:
    """Group GZ DECaLS-style count columns ``<question>_<answer>`` into root questions (no gating).

    Used by the Dirichlet-multinomial loss, which needs only which answers belong to one question.
    """
    groups: dict[str, list[str]] = {}
    for col in columns:
        question = col.split(sep, 1)[0]
        groups.setdefault(question, []).append(col)
    return DecisionTree("from_columns", tuple(Question(q, tuple(a)) for q, a in groups.items()))
