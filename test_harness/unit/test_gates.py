"""Gate expressions: bounded at admission, evaluated on a work budget (NERVE-4006, NERVE-4007)."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.errors import InvalidParams, OrchestratorError, OutputTooLarge
from orchestrator_core.gates import compile_gate, evaluate_gate

FACTS = [{"fact_id": "f0", "seq": 0, "type": "score", "data": {"score": 0.9}}]
DOUBLE20 = "by_type" + "|[@,@]" * 20


def _eval(expression: str, facts: list[dict[str, Any]] = FACTS, work: int = 1_000_000,
          size: int = 1 << 20) -> tuple[bool, Any]:
    return evaluate_gate(compile_gate(expression), facts, max_work=work, max_value_bytes=size)


def _refusal(expression: str, **limits: Any) -> dict[str, Any] | None:
    with pytest.raises(OrchestratorError) as info:
        _eval(expression, **limits)
    assert info.value.code.value == "OUTPUT_TOO_LARGE"
    return info.value.data


class TestAdmission:
    """``compile_gate`` refuses what the parser or the evaluator cannot bound."""

    @pytest.mark.parametrize("expression", [
        "(" * 1000 + "a" + ")" * 1000, "[" * 1000 + "a" + "]" * 1000, "!" * 1500 + "a",
        "a|" * 1200 + "a", "[a," * 100 + "a" + "]" * 100, "f(" * 65 + "a" + ")" * 65,
    ])
    def test_deep_nesting_is_refused_naming_the_field(self, expression: str) -> None:
        """[NERVE-4007] 400 INVALID_PARAMS on input.expression, not a RecursionError."""
        with pytest.raises(InvalidParams) as info:
            compile_gate(expression)
        assert info.value.data == {"field": "input.expression", "limit_depth": 64}

    def test_an_expression_longer_than_4096_characters_is_refused(self) -> None:
        """The length limit holds even without the contract's decoder."""
        with pytest.raises(InvalidParams) as info:
            compile_gate("a" * 4097)
        assert info.value.data == {"field": "input.expression", "limit_chars": 4096}

    def test_a_flat_chain_of_fields_is_not_deep(self) -> None:
        """``a.b.c...`` is one subexpression node with many children."""
        assert _eval("a." * 1000 + "a") == (False, None)


class TestBudget:
    """Evaluation is charged before it works; the value is measured before it is kept."""

    def test_ordinary_gates_pass(self) -> None:
        """[NERVE-4006] The common shapes evaluate as JMESPath does."""
        assert _eval("by_type.score[?score > `0.5`] | length(@) > `0`") == (True, True)
        assert _eval("facts[0].data.score") == (True, 0.9)
        assert _eval("join(',', [to_string(by_type.score[0].score), 'x'])") == (True, "0.9,x")

    def test_a_doubled_value_is_refused_as_too_large(self) -> None:
        """[POLICY-3030] 20 doublings make 2^20 copies: refused at 1 MiB, not built."""
        assert _refusal(DOUBLE20) == {"field": "output.value", "reason": "size",
                                      "limit_bytes": 1048576}

    @pytest.mark.parametrize("tail", [
        "[]" * 20, "[*]" * 20, "|to_string(@)", "|length(to_string(@))",
        "|contains(@, `1`)", "|[@ == @]",
    ])
    def test_walking_a_doubled_value_stops_at_the_work_budget(self, tail: str) -> None:
        """[NERVE-4007] Projections, flattens, serialisation and comparisons are charged."""
        assert _refusal(DOUBLE20 + tail, work=100_000) == {
            "field": "input.expression", "reason": "work", "limit_work": 100_000}

    def test_join_is_charged_before_it_copies(self) -> None:
        """Each join that would quadruple a string is paid for first."""
        expression = "to_string(@)" + "|join('', [@, @, @, @])" * 12
        assert _refusal(expression, work=100_000) == {
            "field": "input.expression", "reason": "work", "limit_work": 100_000}

    def test_a_filter_over_a_hundred_thousand_facts_fits_the_default_budget(self) -> None:
        """The default budget is not a limit on ordinary gates over large runs."""
        facts = [{"fact_id": f"f{i}", "seq": i, "type": "s", "data": {"n": i % 10}}
                 for i in range(100_000)]
        assert _eval("length(facts[?type == 's'])", facts) == (True, 100_000)

    def test_a_type_error_is_invalid_params_without_the_value(self) -> None:
        """The message names the types, never renders the (possibly huge) value."""
        with pytest.raises(InvalidParams) as info:
            _eval(DOUBLE20 + "|abs(@)")
        assert info.value.message == ("gate expression failed: in function abs(), invalid "
                                      "type: expected one of ['number'], received 'array'")

    def test_the_value_may_not_nest_deeper_than_256(self) -> None:
        """A deep literal is refused with reason depth."""
        with pytest.raises(OutputTooLarge) as info:
            _eval("`" + "[" * 300 + "]" * 300 + "`")
        assert info.value.data == {"field": "output.value", "reason": "depth",
                                   "limit_depth": 256}
