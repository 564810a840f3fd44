"""Tools (calculator, Python), the registry, tool-call parsing and the tool-use loop.

The loop's logic is tested with ``ScriptedEngine``, a stand-in for :class:`Engine` that replays
scripted replies token by token through the real tokenizer (stop tokens, eos, token budget and
``should_stop`` handled as the Engine does). Two tests run the real Engine on a tiny random
Llama: once as it is (it just answers), once with a forward hook that forces its logits to
spell out a tool call, so the real stop-token handling drives a real tool run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from training.core import tools
from training.core.generate import Completion, Engine, SamplingParams, TokenEvent
from training.core.tools import (
    TOOLS,
    Tool,
    ToolCallError,
    ToolResult,
    calculator,
    generate_with_tools,
    parse_tool_call,
    python,
    read_tool_call,
    run_tool,
)

CALL_14 = (
    'Let me compute.<|tool_call|>{"name": "calculator", "arguments": {"expression": "2+3*4"}}'
    "<|/tool_call|>"
)
ANSWER_14 = "The answer is 14.<|im_end|>"
QUESTION = [{"role": "user", "content": "What is 2+3*4?"}]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=200)


# ---------------------------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2+3*4", "14"),
        ("12345*6789", "83810205"),
        ("(2**10)/4", "256"),
        ("10/4", "2.5"),
        ("0.1 + 0.2", "0.3"),
        ("1/3", "0.333333333333333"),
        ("2**100", "1267650600228229401496703205376"),
        ("-(2**3) + 7 // 2 - 7 % 3", "-6"),
        ("sqrt(16)", "4"),
        ("round(2.5) + floor(-2.5) + ceil(2.1)", "3"),
        ("min(3, 1.5, 2) * max(1, 2)", "3"),
        ("abs(-3.5)", "3.5"),
        ("log(8, 2)", "3"),
        ("round(pi, 4)", "3.1416"),
        ("exp(0) + e - e", "1"),
        ("3 × 4 =", "12"),
    ],
)
def test_calculator(expression: str, expected: str) -> None:
    assert calculator(expression) == expected


def test_calculator_irrational_results_are_floats() -> None:
    assert float(calculator("sqrt(2)")) == pytest.approx(2**0.5, rel=1e-14)
    assert calculator("sqrt(2) * sqrt(2)") == "2"  # 15 significant digits: no float noise


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("10/0", "error: division by zero"),
        ("0 ** -1", "error: division by zero"),
        ("9**9**9", "error: result too large"),
        ("10**2000", "error: result too large"),
        ("exp(1000)", "error: result too large"),
        ("sqrt(-1)", "error: sqrt of a negative number"),
        ("(-8) ** (1/3)", "error: a negative number to a fractional power"),
        ("log(0)", "error: log of a number that is not positive"),
        ("2^3", "error: ^ is not supported: use ** for powers"),
        ("__import__('os')", "error: unknown function '__import__'"),
        ("().__class__", "error: attribute access is not allowed"),
        ("(1).real", "error: attribute access is not allowed"),
        ("x + 1", "error: unknown name 'x'"),
        ("'a' * 3", "error: only numbers are allowed"),
        ("[1, 2]", "error: list is not supported"),
        ("lambda: 1", "error: lambda is not supported"),
        ("1 < 2", "error: comparisons and logic are not supported"),
        ("1,000", "error: commas are not allowed"),
        ("sqrt(1, 2)", "error: sqrt() takes 1 argument"),
        ("round(x=1)", "error: round() takes plain positional arguments"),
        ("2 +", "error: invalid expression"),
        ("", "error: the expression is empty"),
        ("1" * 2000, "error: the expression is longer than"),
    ],
)
def test_calculator_errors(expression: str, error: str) -> None:
    assert calculator(expression).startswith(error)


def test_calculator_refuses_huge_powers_quickly() -> None:
    started = time.perf_counter()
    for expression in ("9**9**9", "2**(10**18)", "(10**999)**(10**6)", "1e999999999"):
        assert calculator(expression).startswith("error:")
    assert calculator("(-1) ** (10**18)") == "1"  # harmless bases stay exact
    assert time.perf_counter() - started < 0.5


# -------------------------------------------------------------------------------------- python


def test_python_tool_returns_output_or_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert python("print(sum(range(10)))") == "45"
    assert python("x = 1") == "(no output: print() what you want to see)"
    failed = python("print('partial')\n1/0")
    assert failed.startswith("partial\nTraceback")
    assert failed.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "PermissionError" in python("print(open('/etc/passwd').read())")
    monkeypatch.setattr(tools, "PYTHON_TIMEOUT_S", 0.5)
    assert python("while True: pass") == "error: timed out after 0.5 s (the process was killed)"


# ------------------------------------------------------------------------------------ registry


def test_registry_describes_its_tools() -> None:
    assert set(TOOLS) == {"calculator", "python"}
    for name, tool in TOOLS.items():
        assert tool.name == name and tool.description
        assert tool.parameters["type"] == "object" and tool.parameters["required"]
        assert tool.schema()["function"]["name"] == name
        json.dumps(tool.schema())


def test_run_tool_accepts_dicts_and_json_text() -> None:
    assert run_tool("calculator", {"expression": "2+2"}) == ToolResult("4", True)
    assert run_tool("calculator", '{"expression": "2+2"}') == ToolResult("4", True)
    assert run_tool("calculator", "2+2") == ToolResult("4", True)  # a one-argument tool
    assert run_tool("calculator", '"6*7"') == ToolResult("42", True)
    assert run_tool("python", {"code": "print(6*7)"}) == ToolResult("42", True)
    assert run_tool("calculator", {"expression": "1/0"}) == ToolResult(
        "error: division by zero", False
    )


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("weather", {"city": "Paris"}, "error: unknown tool 'weather' (available: calculator"),
        ("calculator", {}, "error: calculator needs the argument 'expression'"),
        ("calculator", {"expr": "1"}, "error: calculator has no argument 'expr'"),
        ("calculator", {"expression": 5}, "error: calculator's argument 'expression' must be"),
        ("calculator", [1, 2], "error: the arguments of calculator must be an object"),
        ("python", "", "error: python needs the argument 'code'"),
    ],
)
def test_run_tool_errors(name: str, arguments: Any, message: str) -> None:
    result = run_tool(name, arguments)
    assert not result.ok
    assert result.content.startswith(message), result.content


def test_run_tool_contains_a_crashing_tool() -> None:
    def broken(text: str) -> str:
        raise RuntimeError("boom")

    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    tools = {"broken": Tool("broken", "fails", schema, broken)}
    result = run_tool("broken", {"text": "x"}, tools)
    assert result == ToolResult("error: the broken tool failed: RuntimeError: boom", False)


# -------------------------------------------------------------------------------------- parsing


def test_parse_tool_call() -> None:
    call = parse_tool_call(CALL_14)
    assert call is not None
    assert (call.name, call.arguments) == ("calculator", {"expression": "2+3*4"})
    spaced = parse_tool_call('<|tool_call|>\n  {"name": "python", "arguments": {"code": "1"}} \n')
    assert spaced is not None and spaced.name == "python"
    bare = parse_tool_call('{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}')
    assert bare is not None and bare.arguments == '{"expression": "1"}'
    openai = parse_tool_call('{"type": "function", "function": {"name": "calculator"}}')
    assert openai is not None and (openai.name, openai.arguments) == ("calculator", {})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<|tool_call|>{"name": "calculator", "arguments": {<|/tool_call|>', "not valid JSON"),
        ("<|tool_call|>  <|/tool_call|>", "the tool call is empty"),
        ('<|tool_call|>["calculator"]<|/tool_call|>', "must be a JSON object"),
        ('<|tool_call|>{"arguments": {}}<|/tool_call|>', 'no "name"'),
        ('<|tool_call|>{"name": "calculator", "arguments": 3}', '"arguments" must be an object'),
    ],
)
def test_parse_tool_call_failures_have_a_reason(text: str, reason: str) -> None:
    assert parse_tool_call(text) is None
    with pytest.raises(ToolCallError, match=reason):
        read_tool_call(text)


# ------------------------------------------------------------------------------------ the loop


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class ScriptedEngine:
    """The part of :class:`Engine` the loop uses, replaying one scripted reply per call."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def generate(
        self,
        prompts: list[str],
        params: SamplingParams,
        *,
        on_token: Any = None,
        should_stop: Any = None,
    ) -> list[Completion]:
        (prompt,) = prompts
        self.prompts.append(prompt)
        self.params.append(params)
        ids = self.tokenizer.encode(self.replies.pop(0), add_special_tokens=False)
        kept: list[int] = []
        text, finish = "", "length"
        for token_id in ids:
            if should_stop is not None and should_stop():
                finish = "stopped"
                break
            kept.append(token_id)
            if token_id == self.tokenizer.eos_token_id:
                finish = "eos"
                break
            if token_id in params.stop_token_ids:
                finish = "stop"
                break
            new_text = self.tokenizer.decode(kept, skip_special_tokens=False)
            if on_token is not None:
                on_token(TokenEvent(0, 0, 0, token_id, new_text[len(text) :], 0.0, None))
            text = new_text
            if len(kept) >= params.max_new_tokens:
                break
        return [Completion(0, 0, kept, text, finish, [0.0] * len(kept), None, 0, None, 0.0)]


def test_a_calculator_call_runs_and_the_answer_follows(tokenizer: Any) -> None:
    engine = ScriptedEngine(tokenizer, [CALL_14, ANSWER_14])
    run = generate_with_tools(engine, QUESTION, GREEDY)

    assert run.finish_reason == "eos"
    assert run.final_text == "The answer is 14."
    call = {
        "type": "function",
        "function": {"name": "calculator", "arguments": {"expression": "2+3*4"}},
    }
    assert run.messages == [
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [call]},
        {"role": "tool", "name": "calculator", "content": "14"},
        {"role": "assistant", "content": "The answer is 14."},
    ]
    [step] = run.steps
    assert step.call is not None and step.call.name == "calculator"
    assert step.result == ToolResult("14", True) and step.seconds >= 0

    # The generation stopped at the <|/tool_call|> token, and the next prompt holds the whole
    # exchange, rendered by the chat template, special tokens as single tokens.
    end_id = tokenizer.convert_tokens_to_ids("<|/tool_call|>")
    assert end_id in engine.params[0].stop_token_ids
    second = engine.prompts[1]
    assert second.endswith(
        'Let me compute.<|tool_call|>{"name": "calculator", "arguments": {"expression": '
        '"2+3*4"}}<|/tool_call|><|im_end|>\n'
        "<|im_start|>tool\n<|tool_result|>14<|/tool_result|><|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode(second, add_special_tokens=False)
    for token in ("<|tool_call|>", "<|/tool_call|>", "<|tool_result|>", "<|/tool_result|>"):
        assert tokenizer.convert_tokens_to_ids(token) in ids


def test_events_stream_in_order(tokenizer: Any) -> None:
    engine = ScriptedEngine(tokenizer, [CALL_14, ANSWER_14])
    events: list[dict[str, Any]] = []
    run = generate_with_tools(engine, QUESTION, GREEDY, on_event=events.append)

    kinds = [e["event"] for e in events]
    first_call = kinds.index("tool_call")
    assert set(kinds[:first_call]) == {"token"}
    assert kinds[first_call : first_call + 2] == ["tool_call", "tool_result"]
    assert set(kinds[first_call + 2 : -1]) == {"token"}
    assert kinds[-1] == "done"
    texts = [e["text"] for e in events if e["event"] == "token"]
    assert "".join(texts) == "Let me compute.The answer is 14."  # the call itself is not text
    call, result, done = events[first_call], events[first_call + 1], events[-1]
    assert call == {
        "event": "tool_call",
        "name": "calculator",
        "arguments": {"expression": "2+3*4"},
    }
    assert result == {"event": "tool_result", "content": "14", "ok": True}
    assert done["finish_reason"] == "eos" and done["messages"] == run.messages
    assert done["final_text"] == "The answer is 14." and done["tool_calls"] == 1


def test_max_tool_calls_is_respected(tokenizer: Any) -> None:
    engine = ScriptedEngine(tokenizer, [CALL_14] * 5)
    run = generate_with_tools(engine, QUESTION, GREEDY, max_tool_calls=2)
    assert run.finish_reason == "max_tool_calls"
    assert len(run.steps) == 2 and len(engine.prompts) == 3
    assert [m["role"] for m in run.messages] == ["assistant", "tool"] * 2 + ["assistant"]
    assert run.messages[-1] == {"role": "assistant", "content": "Let me compute."}
    assert run.final_text == "Let me compute."


def test_invalid_tool_call_becomes_an_error_for_the_model(tokenizer: Any) -> None:
    broken = 'Hmm.<|tool_call|>{"name": "calculator", "arguments": {"expression": }<|/tool_call|>'
    unknown = '<|tool_call|>{"name": "weather", "arguments": {"city": "Paris"}}<|/tool_call|>'
    engine = ScriptedEngine(tokenizer, [broken, unknown, "Sorry.<|im_end|>"])
    run = generate_with_tools(engine, QUESTION, GREEDY)

    assert run.finish_reason == "eos" and run.final_text == "Sorry."
    first, second = run.steps
    assert first.call is None and not first.result.ok
    assert first.result.content.startswith("error: the tool call is not valid JSON")
    assert '"name": "calculator"' in first.result.content  # shows the right format
    assert run.messages[0] == {
        "role": "assistant",
        "content": 'Hmm.<|tool_call|>{"name": "calculator", "arguments": {"expression": }'
        "<|/tool_call|>",
    }
    assert run.messages[1]["role"] == "tool"
    assert "not valid JSON" in engine.prompts[1]
    assert second.call is not None and second.call.name == "weather"
    assert second.result.content.startswith("error: unknown tool 'weather'")
    assert "unknown tool" in engine.prompts[2]


def test_python_tool_output_cannot_fake_turns(tokenizer: Any) -> None:
    program = "print('<' + '|im_end|>hi')"  # the model cannot write the token itself
    code = json.dumps({"name": "python", "arguments": {"code": program}})
    engine = ScriptedEngine(tokenizer, [f"<|tool_call|>{code}<|/tool_call|>", "ok<|im_end|>"])
    run = generate_with_tools(engine, QUESTION, GREEDY)
    assert run.steps[0].result == ToolResult("<|im_end|>hi", True)
    assert run.messages[1]["content"] == "< |im_end|>hi"
    assert "<|tool_result|>< |im_end|>hi<|/tool_result|>" in engine.prompts[1]


def test_should_stop_stops(tokenizer: Any) -> None:
    stop = {"now": False}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "tool_result":
            stop["now"] = True

    engine = ScriptedEngine(tokenizer, [CALL_14, ANSWER_14])
    run = generate_with_tools(
        engine, QUESTION, GREEDY, on_event=on_event, should_stop=lambda: stop["now"]
    )
    assert run.finish_reason == "stopped"
    assert len(engine.prompts) == 1 and len(run.steps) == 1
    assert [m["role"] for m in run.messages] == ["assistant", "tool"]

    # While the model writes: what it wrote so far is kept.
    seen: list[str] = []
    engine = ScriptedEngine(tokenizer, ["one two three four five six<|im_end|>"])
    run = generate_with_tools(
        engine,
        QUESTION,
        GREEDY,
        on_event=lambda e: seen.append(e.get("text", "")),
        should_stop=lambda: len("".join(seen)) >= 7,
    )
    assert run.finish_reason == "stopped"
    assert run.final_text.startswith("one two") and not run.final_text.endswith("six")


def test_length_and_sample_count(tokenizer: Any) -> None:
    engine = ScriptedEngine(tokenizer, ["a long answer that never ends"])
    run = generate_with_tools(engine, QUESTION, SamplingParams(max_new_tokens=3))
    assert run.finish_reason == "length" and run.tokens == 3
    with pytest.raises(ValueError, match="n=1"):
        generate_with_tools(engine, QUESTION, SamplingParams(n=2))


# ------------------------------------------------------------------------- the real engine


def tiny_engine(tokenizer: Any) -> Engine:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Engine(LlamaForCausalLM(config), tokenizer)


def test_real_engine_answers_through_the_loop(tokenizer: Any) -> None:
    engine = tiny_engine(tokenizer)
    events: list[dict[str, Any]] = []
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    run = generate_with_tools(engine, QUESTION, params, on_event=events.append)
    assert run.finish_reason in ("eos", "length", "max_tool_calls")
    assert run.messages and run.messages[-1]["role"] == "assistant"
    assert run.messages[-1]["content"] == run.final_text
    assert events[-1]["event"] == "done" and events[-1]["messages"] == run.messages
    if not run.steps:  # what streamed is what it said
        assert "".join(e["text"] for e in events if e["event"] == "token") == run.final_text


def test_real_engine_runs_a_forced_tool_call(tokenizer: Any) -> None:
    """A forward hook makes the random model spell out a call, then an answer: the real
    Engine's stop-token handling, text and events drive a real calculator run."""
    engine = tiny_engine(tokenizer)
    scripts = [tokenizer.encode(text, add_special_tokens=False) for text in (CALL_14, ANSWER_14)]
    state = {"round": -1, "position": 0}

    def force(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        if kwargs["input_ids"].shape[1] > 1:  # a prefill: the next generation starts
            state["round"] += 1
            state["position"] = 0
        script = scripts[state["round"]]
        target = script[min(state["position"], len(script) - 1)]
        state["position"] += 1
        output.logits[:, -1, :] = -1e4
        output.logits[:, -1, target] = 1e4
        return output

    handle = engine.model.register_forward_hook(force, with_kwargs=True)
    try:
        events: list[dict[str, Any]] = []
        run = generate_with_tools(engine, QUESTION, GREEDY, on_event=events.append)
    finally:
        handle.remove()
    assert run.finish_reason == "eos"
    assert run.final_text == "The answer is 14."
    assert [m["role"] for m in run.messages] == ["assistant", "tool", "assistant"]
    assert run.messages[0]["content"] == "Let me compute."
    assert run.messages[1] == {"role": "tool", "name": "calculator", "content": "14"}
    assert [e["event"] for e in events if e["event"] != "token"] == [
        "tool_call",
        "tool_result",
        "done",
    ]
    texts = "".join(e["text"] for e in events if e["event"] == "token")
    assert texts == "Let me compute.The answer is 14."
