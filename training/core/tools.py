"""Tools a chat model may call (a calculator, a Python sandbox) and the loop that lets it.

The model asks for a tool by writing, inside its turn,
``<|tool_call|>{"name": "calculator", "arguments": {"expression": "2+3*4"}}<|/tool_call|>``
(the chat template of :mod:`training.core.tokenizer` renders an assistant message's
``tool_calls`` the same way). :func:`generate_with_tools` generates until that closing token,
runs the tool, appends the assistant turn (its text before the call, and the call) and a
``tool`` turn holding the result, renders the conversation again and lets the model continue,
until it ends its turn, runs out of tokens, has made ``max_tool_calls`` calls or is stopped.

Tools:

- ``calculator`` (:func:`calculator`): arithmetic parsed with :mod:`ast`, never ``eval``:
  numbers, ``+ - * / // % **``, parentheses, unary ``-``/``+``, ``sqrt abs round min max
  floor ceil log exp`` and the constants ``pi`` and ``e``. Exact rational arithmetic where it
  can be (``0.1 + 0.2`` is ``0.3``, ``2**100`` every digit, ``10/4`` is ``2.5``), floats (15
  significant digits) for irrational results. Results are capped at about 1000 digits, and a
  power whose result would be bigger (``9**9**9``) is refused before it is computed.
- ``python`` (:func:`python`): a program run by :func:`training.core.sandbox.run_python` (its
  own limited interpreter, 3 s, 256 MB, no network, no files outside its folder); the tool
  returns what it printed, or the error.

:data:`TOOLS` maps names to :class:`Tool` (name, description, JSON schema of the arguments,
function); :func:`run_tool` calls one by name with arguments given as a dict or JSON text and
never raises: an unknown tool, bad arguments or a failing tool give ``ToolResult(ok=False)``
with a message the model can read. A tool function returns a :class:`ToolResult`, or a string
(an error when it starts with ``"error:"``).

Simplifications:

- One call per assistant turn: generation stops at the first ``<|/tool_call|>``; the loop does
  not run several calls written side by side in one turn.
- ``params.max_new_tokens`` is the budget of each generation in the loop, not of the whole run:
  a run generates at most ``(max_tool_calls + 1) * max_new_tokens`` tokens.
- A call the model makes after ``max_tool_calls`` is not run: the run ends with
  ``finish_reason="max_tool_calls"`` and the last assistant turn keeps only the text before it.
- Special tokens (``<|im_end|>`` and the like) in a tool's output are defanged (``<|`` becomes
  ``< |``) in the ``tool`` turn, so a program cannot end the turn or fake a new one by printing
  them; :class:`ToolStep` keeps the raw result.
- Only one sample (``n=1``).
"""

from __future__ import annotations

import ast
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from training.core.sandbox import run_python

if TYPE_CHECKING:
    from training.core.generate import Completion, SamplingParams, TokenEvent

TOOL_CALL_START, TOOL_CALL_END = "<|tool_call|>", "<|/tool_call|>"
TURN_END = "<|im_end|>"
FinishReason = str  # "eos" | "stop" | "length" | "stopped" | "max_tool_calls"

MAX_EXPRESSION_CHARS = 1000
MAX_RESULT_DIGITS = 1000
_MAX_BITS = int(MAX_RESULT_DIGITS * math.log2(10)) + 1
PYTHON_OUTPUT_CHARS = 4000  # what the python tool hands back to the model, at most
PYTHON_TIMEOUT_S = 3.0
PYTHON_MEMORY_MB = 256


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model reads in the tool turn
    ok: bool  # False: unknown tool, bad arguments, or the tool reported an error


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., ToolResult | str]

    def schema(self) -> dict[str, Any]:
        """The tool as OpenAI's and Hugging Face's ``tools=[...]`` describe it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] | str
    raw: str = ""  # the JSON text the model wrote

    def message_call(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry (Hugging Face format)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallError(ValueError):
    """The text between ``<|tool_call|>`` and ``<|/tool_call|>`` is not a usable call."""


@dataclass(frozen=True)
class ToolStep:
    call: ToolCall | None  # None when the model's call could not be parsed
    result: ToolResult
    seconds: float  # time the tool took
    raw: str = ""  # the text of the call as the model wrote it


@dataclass
class ToolRun:
    messages: list[dict[str, Any]]  # the new turns: assistant (with tool_calls), tool, ...
    final_text: str  # the text of the last assistant turn
    steps: list[ToolStep] = field(default_factory=list)
    finish_reason: FinishReason = "eos"
    tokens: int = 0  # generated, all rounds together


# ---------------------------------------------------------------------------------- calculator


class _CalcError(Exception):
    pass


Number = Fraction | float
_BINARY_NAMES = {
    ast.BitXor: "^ is not supported: use ** for powers",
    ast.BitAnd: "& is not supported",
    ast.BitOr: "| is not supported",
    ast.LShift: "<< is not supported",
    ast.RShift: ">> is not supported",
    ast.MatMult: "@ is not supported",
}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression; the result as text, or ``"error: ..."``.

    >>> calculator("2 + 3 * 4"), calculator("0.1 + 0.2"), calculator("10 / 0")
    ('14', '0.3', 'error: division by zero')
    """
    return calculate(expression).content


def calculate(expression: str) -> ToolResult:
    """:func:`calculator` as a :class:`ToolResult`."""
    if not isinstance(expression, str):
        return ToolResult("error: the expression must be a string", False)
    text = expression.strip().rstrip("=").strip()
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        return ToolResult("error: the expression is empty", False)
    if len(text) > MAX_EXPRESSION_CHARS:
        return ToolResult(f"error: the expression is longer than {MAX_EXPRESSION_CHARS}", False)
    try:
        tree = ast.parse(text, mode="eval")
    except RecursionError:
        return ToolResult("error: the expression is nested too deeply", False)
    except (SyntaxError, ValueError) as exc:
        detail = getattr(exc, "msg", None) or str(exc)
        return ToolResult(f"error: invalid expression ({detail})", False)
    for node in ast.walk(tree):  # decimals exactly as written: 0.1 is 1/10, 1e-400 not 0
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            node.written = ast.get_source_segment(text, node)  # type: ignore[attr-defined]
    try:
        value = _evaluate(tree.body)
        return ToolResult(_format(value), True)
    except _CalcError as exc:
        return ToolResult(f"error: {exc}", False)
    except ZeroDivisionError:
        return ToolResult("error: division by zero", False)
    except OverflowError:
        return ToolResult("error: result too large", False)
    except RecursionError:
        return ToolResult("error: the expression is nested too deeply", False)


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, complex):
            raise _CalcError("complex numbers are not supported")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _CalcError("only numbers are allowed")
        if isinstance(value, float):
            return _checked(_decimal_literal(getattr(node, "written", None) or repr(value)))
        return _checked(Fraction(value))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise _CalcError(f"{type(node.op).__name__} is not supported")
    if isinstance(node, ast.BinOp):
        if type(node.op) in _BINARY_NAMES:
            raise _CalcError(_BINARY_NAMES[type(node.op)])
        left, right = _evaluate(node.left), _evaluate(node.right)
        return _checked(_binary(node.op, left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise _CalcError(f"{node.id} is a function: call it, as in {node.id}(2)")
        raise _CalcError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise _CalcError("only the functions " + ", ".join(_FUNCTIONS) + " can be called")
        name = node.func.id
        if name not in _FUNCTIONS:
            raise _CalcError(f"unknown function {name!r} (known: {', '.join(_FUNCTIONS)})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise _CalcError(f"{name}() takes plain positional arguments")
        args = [_evaluate(arg) for arg in node.args]
        return _checked(_FUNCTIONS[name](*args))
    if isinstance(node, ast.Attribute):
        raise _CalcError("attribute access is not allowed")
    if isinstance(node, ast.Tuple):
        raise _CalcError("commas are not allowed: write 1000, not 1,000, and one expression")
    if isinstance(node, ast.Compare | ast.BoolOp):
        raise _CalcError("comparisons and logic are not supported")
    raise _CalcError(f"{type(node).__name__.lower()} is not supported in an arithmetic expression")


def _decimal_literal(written: str) -> Fraction:
    try:
        number = Decimal(written.replace("_", ""))
    except ArithmeticError:
        raise _CalcError(f"cannot read the number {written}") from None
    if not number.is_finite() or abs(number.adjusted()) > MAX_RESULT_DIGITS:
        raise _CalcError(f"the number {written} is too large or too small")
    return Fraction(number)


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, ast.Div):
        return left / right
    if isinstance(op, ast.FloorDiv):
        return left // right
    if isinstance(op, ast.Mod):
        return left % right
    if isinstance(op, ast.Pow):
        return _power(left, right)
    raise _CalcError(f"{type(op).__name__} is not supported")


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        n = exponent.numerator
        if isinstance(base, Fraction):
            size = max(base.numerator.bit_length(), base.denominator.bit_length())
            if abs(base) not in (0, 1) and abs(n) * max(1, size - 1) > _MAX_BITS:
                raise _CalcError(f"result too large (more than about {MAX_RESULT_DIGITS} digits)")
            return base**n  # exact; 0 ** -1 raises ZeroDivisionError
        return math.pow(base, n)
    if base < 0:
        raise _CalcError("a negative number to a fractional power is not a real number")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError
    return math.pow(float(base), float(exponent))


def _checked(value: Number) -> Number:
    if isinstance(value, int):
        value = Fraction(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise _CalcError("the result is not a number")
        if math.isinf(value):
            raise OverflowError
        return value
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise _CalcError(f"result too large (more than about {MAX_RESULT_DIGITS} digits)")
    return value


def _arity(name: str, args: tuple[Number, ...], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise _CalcError(f"{name}() takes {want} argument{'s' if high > 1 else ''}")


def _sqrt(*args: Number) -> Number:
    _arity("sqrt", args, 1, 1)
    (x,) = args
    if x < 0:
        raise _CalcError("sqrt of a negative number")
    if isinstance(x, Fraction):
        top, bottom = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if top * top == x.numerator and bottom * bottom == x.denominator:
            return Fraction(top, bottom)
    return math.sqrt(x)


def _abs(*args: Number) -> Number:
    _arity("abs", args, 1, 1)
    return abs(args[0])


def _round(*args: Number) -> Number:
    """Half away from zero (``round(2.5)`` is 3), as on a calculator, exactly."""
    _arity("round", args, 1, 2)
    x = args[0] if isinstance(args[0], Fraction) else Fraction(repr(args[0]))
    digits = args[1] if len(args) > 1 else Fraction(0)
    if not (isinstance(digits, Fraction) and digits.denominator == 1 and abs(digits) <= 100):
        raise _CalcError("round()'s second argument must be a whole number from -100 to 100")
    scale = Fraction(10) ** int(digits)
    magnitude = math.floor(abs(x) * scale + Fraction(1, 2))
    return Fraction(magnitude if x >= 0 else -magnitude) / scale


def _min(*args: Number) -> Number:
    if not args:
        raise _CalcError("min() takes at least 1 argument")
    return min(args)


def _max(*args: Number) -> Number:
    if not args:
        raise _CalcError("max() takes at least 1 argument")
    return max(args)


def _floor(*args: Number) -> Number:
    _arity("floor", args, 1, 1)
    return Fraction(math.floor(args[0]))


def _ceil(*args: Number) -> Number:
    _arity("ceil", args, 1, 1)
    return Fraction(math.ceil(args[0]))


def _ln(x: Number) -> float:
    if x <= 0:
        raise _CalcError("log of a number that is not positive")
    if isinstance(x, Fraction):  # big integers keep their precision: math.log takes them whole
        return math.log(x.numerator) - math.log(x.denominator)
    return math.log(x)


def _log(*args: Number) -> Number:
    """``log(x)`` is the natural logarithm; ``log(x, base)`` any other."""
    _arity("log", args, 1, 2)
    if len(args) == 1:
        return _ln(args[0])
    base = args[1]
    if base <= 0 or base == 1:
        raise _CalcError("log's base must be positive and not 1")
    return _ln(args[0]) / _ln(base)


def _exp(*args: Number) -> Number:
    _arity("exp", args, 1, 1)
    return math.exp(args[0])


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "abs": _abs,
    "round": _round,
    "min": _min,
    "max": _max,
    "floor": _floor,
    "ceil": _ceil,
    "log": _log,
    "exp": _exp,
}


def _format(value: Number) -> str:
    """Integers in full; other rationals exactly when that is short (``2.5``, ``0.125``), else
    15 significant digits, as floats are."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".15g")
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    if denominator == 1:  # a terminating decimal: print it exactly if it is short
        with localcontext() as context:
            context.prec = MAX_RESULT_DIGITS * 2
            exact = format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")
        if len(exact.lstrip("-0.")) <= 20 and len(exact) <= 24:
            return exact
    with localcontext() as context:
        context.prec = 15
        return format(Decimal(value.numerator) / Decimal(value.denominator), ".15g")


# -------------------------------------------------------------------------------------- python


def python(code: str) -> str:
    """Run ``code`` in the sandbox; what it printed, or the error (with the traceback)."""
    return run_python_code(code).content


def run_python_code(code: str) -> ToolResult:
    """:func:`python` as a :class:`ToolResult`."""
    if not isinstance(code, str):
        return ToolResult("error: the code must be a string", False)
    if not code.strip():
        return ToolResult("error: the code is empty", False)
    result = run_python(
        code,
        timeout_s=PYTHON_TIMEOUT_S,
        memory_mb=PYTHON_MEMORY_MB,
        max_output_chars=PYTHON_OUTPUT_CHARS,
    )
    stdout, stderr = result.stdout.rstrip("\n"), result.stderr.rstrip("\n")
    if result.ok:
        parts = [stdout] if stdout else []
        if stderr:
            parts.append("stderr:\n" + _tail(stderr, PYTHON_OUTPUT_CHARS // 2))
        return ToolResult("\n".join(parts) or "(no output: print() what you want to see)", True)
    parts = [stdout] if stdout else []
    if stderr:
        parts.append(_tail(stderr, PYTHON_OUTPUT_CHARS // 2))
    if not stderr or result.reason not in stderr:
        parts.append(f"error: {result.reason}")
    return ToolResult("\n".join(parts), False)


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "[...]\n" + text[-chars:]


# ------------------------------------------------------------------------------------ registry

TOOLS: dict[str, Tool] = {
    "calculator": Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and "
            "parentheses, sqrt, abs, round, min, max, floor, ceil, log, exp, pi, e."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "for example (2**10)/4"}
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        fn=calculate,
    ),
    "python": Tool(
        name="python",
        description=(
            "Run a short Python program (standard library only, no network, no files outside "
            f"its own folder, {PYTHON_TIMEOUT_S:g} s) and return what it prints."
        ),
        parameters={
            "type": "object",
            "properties": {"code": {"type": "string", "description": "use print() for results"}},
            "required": ["code"],
            "additionalProperties": False,
        },
        fn=run_python_code,
    ),
}


class _BadArguments(ValueError):
    pass


def run_tool(
    name: str, arguments: Mapping[str, Any] | str | None, tools: Mapping[str, Tool] = TOOLS
) -> ToolResult:
    """Call the tool ``name`` with ``arguments`` (a dict, or JSON text of one); never raises."""
    tool = tools.get(name) if isinstance(name, str) else None
    if tool is None:
        known = ", ".join(tools) or "none"
        return ToolResult(f"error: unknown tool {name!r} (available: {known})", False)
    try:
        kwargs = _arguments(tool, arguments)
    except _BadArguments as exc:
        return ToolResult(f"error: {exc}", False)
    try:
        out = tool.fn(**kwargs)
    except Exception as exc:  # a tool's bug must not end the conversation
        return ToolResult(f"error: the {tool.name} tool failed: {type(exc).__name__}: {exc}", False)
    if isinstance(out, ToolResult):
        return out
    text = str(out)
    return ToolResult(text, not text.startswith("error:"))


def _arguments(tool: Tool, arguments: Mapping[str, Any] | str | None) -> dict[str, Any]:
    properties: dict[str, Any] = tool.parameters.get("properties", {})
    required: list[str] = list(tool.parameters.get("required", []))
    takes = ", ".join(properties) or "no arguments"
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
        elif len(properties) == 1:  # a bare expression or program for a one-argument tool
            arguments = {next(iter(properties)): parsed if isinstance(parsed, str) else arguments}
        else:
            raise _BadArguments(f"the arguments of {tool.name} must be a JSON object ({takes})")
    if not isinstance(arguments, Mapping):
        raise _BadArguments(f"the arguments of {tool.name} must be an object ({takes})")
    unknown = [key for key in arguments if key not in properties]
    if unknown:
        raise _BadArguments(f"{tool.name} has no argument {unknown[0]!r} (it takes: {takes})")
    missing = [key for key in required if key not in arguments]
    if missing:
        raise _BadArguments(f"{tool.name} needs the argument {missing[0]!r}")
    for key, value in arguments.items():
        if properties[key].get("type") == "string" and not isinstance(value, str):
            raise _BadArguments(f"{tool.name}'s argument {key!r} must be a string")
    return dict(arguments)


# --------------------------------------------------------------------------------- tool calls


def read_tool_call(text: str) -> ToolCall:
    """The call in ``text``: the JSON after ``<|tool_call|>`` (up to ``<|/tool_call|>`` if
    present), or ``text`` itself. Raises :class:`ToolCallError` with the reason."""
    body = text
    start = body.find(TOOL_CALL_START)
    if start >= 0:
        body = body[start + len(TOOL_CALL_START) :]
    end = body.find(TOOL_CALL_END)
    if end >= 0:
        body = body[:end]
    body = body.strip()
    if body.startswith("```"):  # a fenced block: ```json ... ```
        body = body.partition("\n")[2].rstrip().removesuffix("```").strip()
    if not body:
        raise ToolCallError("the tool call is empty")
    try:
        value, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        raise ToolCallError(
            f"the tool call is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]  # OpenAI's {"type": "function", "function": {...}}
    if not isinstance(value, dict):
        raise ToolCallError('the tool call must be a JSON object with "name" and "arguments"')
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallError('the tool call has no "name"')
    arguments = value.get("arguments", value.get("parameters"))
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict | str):
        raise ToolCallError('the tool call\'s "arguments" must be an object')
    return ToolCall(name=name.strip(), arguments=arguments, raw=body)


def parse_tool_call(text: str) -> ToolCall | None:
    """:func:`read_tool_call`, or None when there is no usable call (the reason:
    :func:`read_tool_call` raises it)."""
    try:
        return read_tool_call(text)
    except ToolCallError:
        return None


# ------------------------------------------------------------------------------- the tool loop


def generate_with_tools(
    engine: Any,
    messages: list[dict[str, Any]],
    params: SamplingParams,
    *,
    tools: Mapping[str, Tool] = TOOLS,
    max_tool_calls: int = 4,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ToolRun:
    """Generate the assistant's reply to ``messages``, running the tools it calls.

    ``engine`` is a :class:`training.core.generate.Engine` (or anything with its ``tokenizer``
    and ``generate``). ``on_event`` receives, in order: ``{"event": "token", "text"}`` for the
    text the model writes (not the tool calls themselves), ``{"event": "tool_call", "name",
    "arguments"}`` (``name`` None and ``arguments`` the raw text for a call that could not be
    parsed), ``{"event": "tool_result", "content", "ok"}``, and finally ``{"event": "done",
    "finish_reason", "final_text", "messages", "tool_calls", "tokens"}``.

    ``finish_reason``: ``eos`` (the model ended its turn), ``stop`` (one of ``params``' own stop
    strings or tokens), ``length`` (``max_new_tokens`` in one generation, or the context window
    is full), ``stopped`` (``should_stop``), ``max_tool_calls``.
    """
    if params.n != 1:
        raise ValueError("generate_with_tools generates one sample: use n=1")
    from training.core.generate import chat_prompt

    tokenizer = engine.tokenizer
    stop = should_stop or _never
    emit = on_event or _ignore
    end_id = _special_id(tokenizer, TOOL_CALL_END)
    turn_end_id = _special_id(tokenizer, TURN_END)
    stop_ids = list(params.stop_token_ids)
    stop_strings = list(params.stop_strings)
    if end_id is not None:
        stop_ids.append(end_id)
    else:  # a tokenizer without the token: the engine finds the text instead
        stop_strings.append(TOOL_CALL_END)
    if turn_end_id is not None and turn_end_id != tokenizer.eos_token_id:
        stop_ids.append(turn_end_id)
    round_params = params.model_copy(
        update={"stop_token_ids": list(dict.fromkeys(stop_ids)), "stop_strings": stop_strings}
    )
    window = getattr(engine, "context_window", None)

    new: list[dict[str, Any]] = []
    steps: list[ToolStep] = []
    final_text, finish, tokens = "", "stopped", 0
    while True:
        if stop():
            finish = "stopped"
            break
        prompt = chat_prompt(tokenizer, list(messages) + new)
        if window is not None and len(tokenizer.encode(prompt, add_special_tokens=False)) >= window:
            finish = "length"
            break
        streamer = _TextStreamer(emit)
        (completion,) = engine.generate(
            [prompt], round_params, on_token=streamer, should_stop=should_stop
        )
        tokens += len(completion.token_ids)
        text = completion.text
        if not _ended_by_call(completion, end_id, tokenizer):
            finish = completion.finish_reason
            if finish == "stop" and completion.token_ids[-1:] == [turn_end_id]:
                finish = "eos"  # <|im_end|> ended the turn (a tokenizer whose eos differs)
            final_text = text
            new.append({"role": "assistant", "content": text})
            break
        before, found, call_text = text.partition(TOOL_CALL_START)
        if not found:  # a closing tag without an opening one: all of it was meant as the call
            before, call_text = "", text
        if len(steps) >= max_tool_calls:
            finish, final_text = "max_tool_calls", before
            new.append({"role": "assistant", "content": before})
            break
        step = _run_call(call_text, tools, emit)
        steps.append(step)
        if step.call is not None:
            assistant = {"role": "assistant", "content": before, "tool_calls": []}
            assistant["tool_calls"].append(step.call.message_call())
        else:  # keep what the model wrote, so the next prompt shows its mistake
            written = f"{before}{TOOL_CALL_START}{call_text}{TOOL_CALL_END}"
            assistant = {"role": "assistant", "content": written}
        new.append(assistant)
        new.append(
            {
                "role": "tool",
                "name": step.call.name if step.call is not None else "",
                "content": _defang(step.result.content, tokenizer),
            }
        )
    emit(
        {
            "event": "done",
            "finish_reason": finish,
            "final_text": final_text,
            "messages": new,
            "tool_calls": len(steps),
            "tokens": tokens,
        }
    )
    return ToolRun(
        messages=new, final_text=final_text, steps=steps, finish_reason=finish, tokens=tokens
    )


def _run_call(call_text: str, tools: Mapping[str, Tool], emit: Callable[[dict], None]) -> ToolStep:
    started = time.perf_counter()
    try:
        call: ToolCall | None = read_tool_call(call_text)
    except ToolCallError as exc:
        call = None
        emit({"event": "tool_call", "name": None, "arguments": call_text})
        example = {"name": "calculator", "arguments": {"expression": "2+2"}}
        result = ToolResult(f"error: {exc}. Write a call as {json.dumps(example)}", False)
    else:
        assert call is not None
        emit({"event": "tool_call", "name": call.name, "arguments": call.arguments})
        result = run_tool(call.name, call.arguments, tools)
    emit({"event": "tool_result", "content": result.content, "ok": result.ok})
    return ToolStep(call, result, time.perf_counter() - started, raw=call_text)


def _ended_by_call(completion: Completion, end_id: int | None, tokenizer: Any) -> bool:
    if completion.finish_reason != "stop" or not completion.token_ids:
        return False
    if end_id is not None:
        return completion.token_ids[-1] == end_id
    generated = tokenizer.decode(completion.token_ids, skip_special_tokens=False)
    return TOOL_CALL_END in generated and TOOL_CALL_END not in completion.text


def _special_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer has it as a single token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        return None
    return token_id if tokenizer.convert_ids_to_tokens(token_id) == token else None


def _defang(text: str, tokenizer: Any) -> str:
    specials = set(getattr(tokenizer, "all_special_tokens", [])) | {
        TOOL_CALL_START,
        TOOL_CALL_END,
        "<|tool_result|>",
        "<|/tool_result|>",
        TURN_END,
        "<|im_start|>",
    }
    for token in sorted(specials, key=len, reverse=True):
        if len(token) > 1 and token in text:
            harmless = (
                token.replace("<|", "< |") if "<|" in token else f"{token[0]}\u200b{token[1:]}"
            )
            text = text.replace(token, harmless)
    return text


class _TextStreamer:
    """Forwards token text as ``token`` events, holding back the tool call itself."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.in_call = False

    def __call__(self, event: TokenEvent) -> None:
        if self.in_call or not event.text:
            return
        text = event.text
        cut = text.find(TOOL_CALL_START)
        if cut >= 0:
            text, self.in_call = text[:cut], True
        if text:
            self.emit({"event": "token", "text": text})


def _never() -> bool:
    return False


def _ignore(event: dict[str, Any]) -> None:
    return None
