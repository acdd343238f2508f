"""Our token loop against ``Llama.generate`` on the real SmolLM2 model, and the prompt lookup."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from appliance.config.schema import DEFAULT_SYSTEM_PROMPT
from appliance.errors import ModelError
from appliance.llm import ChatRequest, Engine, sampler
from appliance.llm.decode_loop import Generation, generate
from appliance.llm.grammar import grammar_for
from appliance.llm.lookup import PromptLookup
from appliance.llm.prompt import ChatPrompt

GREEDY: dict[str, Any] = dict(temp=0.0, top_p=0.95, top_k=40, repeat_penalty=1.1,
                              frequency_penalty=0.0, presence_penalty=0.0)

# --- the prompt lookup alone ---------------------------------------------------------------


def test_the_lookup_proposes_what_followed_the_latest_earlier_match() -> None:
    draft = PromptLookup(max_ngram=3, max_draft=4, min_ngram=2)
    draft.start([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3])
    assert draft.propose(10) == [7, 8, 2, 3]  # (2, 3) last seen before 7, not before 4
    draft.push(7)
    assert draft.propose(10) == [8, 2, 3, 7]  # (2, 3, 7) now matches: the longest n-gram wins


def test_the_lookup_prefers_the_longest_ngram() -> None:
    draft = PromptLookup(max_ngram=3, max_draft=2, min_ngram=1)
    draft.start([1, 2, 3, 50, 51, 9, 3, 60, 61, 1, 2, 3])
    assert draft.propose(5) == [50, 51]  # (1, 2, 3) beats the later (3,)


def test_the_lookup_respects_the_limit_and_never_matches_itself() -> None:
    draft = PromptLookup(max_ngram=2, max_draft=10, min_ngram=2)
    draft.start([4, 5, 6, 7, 4, 5])
    assert draft.propose(2) == [6, 7]
    assert draft.propose(0) == []
    draft.start([1, 2, 3])
    assert draft.propose(5) == []  # the final n-gram is not its own earlier occurrence


def test_the_lookup_ignores_ngrams_shorter_than_min_ngram() -> None:
    draft = PromptLookup(max_ngram=3, max_draft=5, min_ngram=3)
    draft.start([1, 2, 3, 4, 9, 8, 3])
    assert draft.propose(5) == []  # only (3,) and (8, 3) match nothing longer
    draft.start([1, 2, 3, 4, 9, 2, 3])
    assert draft.propose(5) == []  # (2, 3) matches, but two tokens are too few
    draft.start([1, 2, 3, 4, 9, 1, 2, 3])
    assert draft.propose(5) == [4, 9, 1, 2, 3]


def test_the_draft_length_follows_what_was_accepted() -> None:
    draft = PromptLookup(max_ngram=1, max_draft=6, min_ngram=1, grow=2)
    draft.start([7, *range(10, 30), 7])
    assert len(draft.propose(50)) == 6
    draft.verified(6, 2)
    assert len(draft.propose(50)) == 2  # a miss: as long as what was accepted
    draft.verified(2, 2)
    assert len(draft.propose(50)) == 4  # taken whole: longer again, up to max_draft
    draft.verified(4, 0)
    assert len(draft.propose(50)) == 1  # never less than one
    draft.start([7, *range(10, 30), 7])
    assert len(draft.propose(50)) == 6  # a new text starts afresh


def test_the_lookup_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PromptLookup(max_ngram=0)
    with pytest.raises(ValueError, match="min_ngram at most max_ngram"):
        PromptLookup(max_ngram=2, min_ngram=3)


# --- the loop on the real model -------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(engine: Engine) -> llama_cpp.Llama:
    """The engine's Llama (n_ctx 1024), as the engine will drive it."""
    return engine.llama


def _prompt(llm: llama_cpp.Llama, question: str, passage: str | None = None,
            system: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    return ChatPrompt(llm).tokens(system, question, (), (passage,) if passage else ())


def _take(llm: llama_cpp.Llama, tokens: Iterable[int], limit: int,
          each: Callable[[int], None] | None = None) -> list[int]:
    """The tokens up to the end of the answer or ``limit``, as the engine consumes them.

    ``each`` sees every token as it arrives, before the next one is asked for.
    """
    out: list[int] = []
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    for token in tokens:
        out.append(token)
        if each is not None:
            each(token)
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= limit:
            break
    return out


def _primed(llm: llama_cpp.Llama, tokens: list[int]) -> None:
    """Evaluate all of the prompt ``tokens`` but the last: the runs compared start from here.

    ``Llama.generate(reset=True)`` and our loop both keep the cached prefix and
    evaluate the rest (here the last token; after a run, the prompt is cached whole
    and both replay its last token), so each run starts from the same state and
    the prompt is evaluated once, not once per run. The fresh start is compared in
    :func:`test_unconstrained_tokens_are_those_of_llama_generate`.
    """
    llm.reset()
    llm.eval(tokens[:-1])


QUESTIONS = ("What is two plus two?", "Name a colour.", "Why is the sky blue?",
             "Give me one tip for watering tomatoes.")


@pytest.mark.slow
@pytest.mark.parametrize("question", QUESTIONS)
def test_unconstrained_tokens_are_those_of_llama_generate(llm: llama_cpp.Llama,
                                                          question: str) -> None:
    tokens = _prompt(llm, question)
    llm.reset()
    theirs = _take(llm, llm.generate(tokens, reset=True, **GREEDY), 40)
    llm.reset()
    ours = _take(llm, generate(llm, tokens, grammar=None, **GREEDY), 40)
    assert ours == theirs and len(ours) > 3


@pytest.mark.slow
def test_sampled_tokens_are_those_of_llama_generate_with_the_same_seed(
        llm: llama_cpp.Llama) -> None:
    tokens = _prompt(llm, "Tell me a story about a fox.")
    sampling = dict(GREEDY, temp=0.9)
    runs = []
    _primed(llm, tokens)
    for make in (lambda: llm.generate(tokens, reset=True, **sampling),
                 lambda: generate(llm, tokens, grammar=None, **sampling)):
        llm.set_seed(7)
        runs.append(_take(llm, make(), 40))
    assert runs[0] == runs[1]


def _state(llm: llama_cpp.Llama) -> tuple[int, list[int], bool]:
    return llm.n_tokens, llm.input_ids[: llm.n_tokens].tolist(), llm._requires_eval


@pytest.mark.slow
def test_the_context_is_left_as_llama_generate_leaves_it(llm: llama_cpp.Llama) -> None:
    first = _prompt(llm, "What is two plus two?")
    second = _prompt(llm, "Name a colour.")
    states = []
    for run in (lambda t: llm.generate(t, reset=True, **GREEDY),
                lambda t: generate(llm, t, grammar=None, **GREEDY)):
        llm.reset()
        taken = _take(llm, run(first), 5)
        after_first = _state(llm)
        again = _take(llm, run(first), 5)  # the prompt is cached whole: same answer
        followed = _take(llm, run(second), 5)  # a prefix reused, the rest evaluated
        states.append((taken, after_first, again, followed, _state(llm)))
    assert states[0] == states[1]
    taken, (n, ids, _), again, _, _ = states[1]
    assert again == taken
    assert n == len(first) + 4 and ids == first + taken[:4]


@pytest.mark.slow
def test_a_restored_prompt_replays_its_last_token(llm: llama_cpp.Llama) -> None:
    tokens = _prompt(llm, "Name a colour.")
    llm.reset()
    llm.eval(tokens)
    llm._requires_eval = True  # what kv_state.restore leaves: KV cells, no logits
    gen = generate(llm, tokens, grammar=None, **GREEDY)
    next(gen)
    assert llm.n_tokens == len(tokens) and not llm._requires_eval


@pytest.mark.slow
def test_logits_are_those_that_sampled_the_token(llm: llama_cpp.Llama) -> None:
    tokens = _prompt(llm, "Repeat: the red valve opens the tank.", "The red valve opens the tank.")
    plain = dict(GREEDY, repeat_penalty=1.0)  # greedy is then the argmax of the raw logits
    _primed(llm, tokens)
    for draft in (None, PromptLookup()):
        gen = generate(llm, tokens, grammar=None, draft=draft, **plain)

        def check(token: int, gen: Generation = gen, plain_loop: bool = draft is None) -> None:
            # gen.logits() is valid only until the next token is asked for: check it now.
            assert int(np.argmax(gen.logits())) == token
            if plain_loop:
                assert np.array_equal(gen.logits(), np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)))

        assert len(_take(llm, gen, 24, check)) > 3
        if draft is not None:
            assert gen.accepted > 0


PASSAGES = (
    ("Quote what the manual says about the filter, word for word.",
     "Clean the intake filter every two weeks. Unscrew the cap, pull the filter out, rinse it "
     "under running water and let it dry before you put it back."),
    ("Quote the safety instructions word for word.",
     "Read this manual before you install the pump. Always disconnect the pump from the mains "
     "before any work on it, and make sure that nobody can switch it on while you work."),
    ("What does the manual say about frost? Quote it.",
     "When the outside temperature falls below 2 degrees Celsius, the controller closes the "
     "roof vents and runs the heater until the greenhouse is above 5 degrees Celsius."),
)


def _with_and_without_drafts(llm: llama_cpp.Llama, tokens: list[int],
                             grammar: LlamaGrammar | None,
                             n: int) -> tuple[list[int], list[int], Generation]:
    """``n`` greedy tokens without drafts, then with them, and the drafted generation."""
    runs = []
    _primed(llm, tokens)
    for draft in (None, PromptLookup()):
        gen = generate(llm, tokens, grammar=grammar, draft=draft, **GREEDY)
        runs.append((_take(llm, gen, n), gen))
    (plain, _), (drafted, gen) = runs
    return plain, drafted, gen


@pytest.mark.slow
@pytest.mark.parametrize(("question", "passage"), PASSAGES)
def test_greedy_answers_are_the_same_with_drafts(llm: llama_cpp.Llama, question: str,
                                                 passage: str) -> None:
    # Batched evaluation gives the same logits as one token at a time only with flash
    # attention (kv_state.FLASH_ATTENTION): without it these answers drift apart.
    plain, drafted, gen = _with_and_without_drafts(llm, _prompt(llm, question, passage), None, 80)
    assert drafted == plain
    assert gen.accepted > 0, llm.detokenize(plain).decode()


@pytest.mark.slow
def test_drafts_under_a_grammar_still_obey_it_and_change_nothing(llm: llama_cpp.Llama) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 200}},
              "required": ["answer"], "additionalProperties": False}
    grammar = grammar_for(json.dumps(schema))
    question, passage = PASSAGES[0]
    tokens = _prompt(llm, question, passage, system="Reply with one JSON object only.")
    plain, drafted, gen = _with_and_without_drafts(llm, tokens, grammar, 120)
    assert drafted == plain and gen.accepted > 0
    assert _obeys(json.loads(llm.detokenize(drafted).decode()), schema)


@pytest.mark.slow
def test_the_engine_drafts_when_asked_and_answers_the_same(engine: Engine) -> None:
    question, passage = PASSAGES[1]
    plain = engine.complete(ChatRequest(question, max_tokens=60, context=(passage,)))
    drafted = engine.complete(ChatRequest(question, max_tokens=60, context=(passage,),
                                          prompt_lookup=True))
    assert drafted.text == plain.text and drafted.tokens == plain.tokens
    assert plain.drafted == 0 and drafted.accepted > 0
    assert drafted.drafted >= drafted.accepted


@pytest.mark.slow
def test_an_empty_prompt_is_refused(llm: llama_cpp.Llama) -> None:
    with pytest.raises(ValueError, match="at least one prompt token"):
        generate(llm, [], grammar=None, **GREEDY)


@pytest.mark.slow
def test_a_grammar_llama_cpp_cannot_compile_is_a_model_error(llm: llama_cpp.Llama) -> None:
    broken = LlamaGrammar.from_string('root ::= "a" (', verbose=False)
    with pytest.raises(ModelError, match="could not compile the output grammar"):
        generate(llm, _prompt(llm, "Hi"), grammar=broken, **GREEDY)


# --- grammar-constrained output -------------------------------------------------------------

MINUTES = list(range(1, 61))
SCHEMAS: dict[str, dict[str, Any]] = {
    "enum": {"type": "object", "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "sure": {"type": "boolean"}}, "required": ["colour", "sure"],
        "additionalProperties": False},
    # minimum/maximum as the actions registry hands them to the grammar: an enum of the
    # range (llama-cpp-python's json_schema_to_gbnf ignores minimum and maximum).
    "bounded integer": {"type": "object", "properties": {
        "minutes": {"type": "integer", "enum": MINUTES},
        "reason": {"type": "string", "maxLength": 40}}, "required": ["minutes", "reason"],
        "additionalProperties": False},
    "one of": {"oneOf": [
        {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 80}},
         "required": ["answer"], "additionalProperties": False},
        {"type": "object", "properties": {
            "action": {"const": "vent_open"},
            "args": {"type": "object", "properties": {"minutes": {"enum": MINUTES}},
                     "required": ["minutes"], "additionalProperties": False}},
         "required": ["action", "args"], "additionalProperties": False},
        {"type": "object", "properties": {
            "action": {"const": "fan_on"},
            "args": {"type": "object", "properties": {}, "additionalProperties": False}},
         "required": ["action", "args"], "additionalProperties": False}]},
    "nested": {"type": "object", "properties": {
        "device": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24},
            "readings": {"type": "array", "items": {"type": "integer", "enum": [0, 1, 2, 3]},
                         "minItems": 1, "maxItems": 3}},
            "required": ["name", "readings"], "additionalProperties": False},
        "ok": {"type": "boolean"}}, "required": ["device", "ok"],
        "additionalProperties": False},
}
REQUESTS = {
    "enum": ("What colour is grass? Reply in JSON.", "Pick a colour for the sea.",
             "Is a ripe tomato red? JSON please.", "Which colour do you like?",
             "Tell me a joke."),
    "bounded integer": ("Open the vent for ten minutes.", "How long should I air the room?",
                        "Open the vent for two hours.", "Ventilate briefly.",
                        "What is the capital of France?"),
    "one of": ("Turn on the fan.", "Open the vent for 5 minutes.", "What is two plus two?",
               "It is hot in here, do something.", "Say hello."),
    "nested": ("Describe the greenhouse sensor as JSON.", "Report the pump readings.",
               "List the status of the boiler.", "Who are you?", "Give me three numbers."),
}
COMPARED = {
    "enum": ("What colour is grass? Reply in JSON.", "Is a ripe tomato red? JSON please.",
             "Tell me a joke."),
    "bounded integer": ("Open the vent for ten minutes.", "Open the vent for two hours.",
                        "What is the capital of France?"),
    "one of": ("Turn on the fan.", "Open the vent for 5 minutes.", "Say hello."),
    "nested": ("Describe the greenhouse sensor as JSON.", "Who are you?",
               "Give me three numbers."),
}
"""The requests compared with ``Llama.generate``: per schema one it asks for, one beside it
and one off topic, each taking every path of the sampler (the near-top choice, the grammar
rejecting it, the whole vocabulary). The two of :data:`REQUESTS` left out of each took
the same paths about as often (counted once over all twenty)."""
CASES = [(name, request) for name, requests in COMPARED.items() for request in requests]


def _obeys(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` fits ``schema`` (the keywords the schemas above use)."""
    if "oneOf" in schema:
        return sum(_obeys(value, option) for option in schema["oneOf"]) == 1
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return (isinstance(value, dict) and set(schema.get("required", ())) <= set(value)
                and (schema.get("additionalProperties", True) or set(value) <= set(properties))
                and all(_obeys(v, properties[k]) for k, v in value.items() if k in properties))
    if kind == "array":
        return (isinstance(value, list)
                and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30)
                and all(_obeys(v, schema["items"]) for v in value))
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", 1 << 30)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return kind is None


def test_the_schema_check_itself_rejects_what_it_should() -> None:
    one_of = SCHEMAS["one of"]
    assert _obeys({"action": "fan_on", "args": {}}, one_of)
    assert not _obeys({"action": "fan_on", "args": {"minutes": 3}}, one_of)
    assert not _obeys({"action": "vent_open", "args": {"minutes": 61}}, one_of)
    assert not _obeys({"answer": "x", "action": "fan_on"}, one_of)
    assert not _obeys({"device": {"name": "a", "readings": []}, "ok": True}, SCHEMAS["nested"])
    assert not _obeys({"colour": "red", "sure": 1}, SCHEMAS["enum"])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "request_text"), CASES)
def test_grammar_output_parses_obeys_and_matches_llama_generate(
        llm: llama_cpp.Llama, name: str, request_text: str) -> None:
    schema = SCHEMAS[name]
    grammar = grammar_for(json.dumps(schema))
    tokens = _prompt(llm, request_text, system="Reply with one JSON object only.")
    _primed(llm, tokens)
    theirs = _take(llm, llm.generate(tokens, reset=True, grammar=grammar, **GREEDY), 96)
    ours = _take(llm, generate(llm, tokens, grammar=grammar, **GREEDY), 96)
    assert ours == theirs
    text = llm.detokenize(ours).decode()
    assert llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm._model.model),
                                        ours[-1]), f"no end within 96 tokens: {text!r}"
    assert _obeys(json.loads(text), schema), text


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampled_grammar_output_still_obeys(llm: llama_cpp.Llama, name: str) -> None:
    grammar = grammar_for(json.dumps(SCHEMAS[name]))
    for seed, request_text in enumerate(REQUESTS[name][:3]):
        llm.set_seed(seed)
        tokens = _prompt(llm, request_text, system="Reply with one JSON object only.")
        ours = _take(llm, generate(llm, tokens, grammar=grammar, **dict(GREEDY, temp=1.0)), 200)
        text = llm.detokenize(ours).decode()
        assert _obeys(json.loads(text), SCHEMAS[name]), text


@pytest.mark.slow
def test_a_grammar_far_from_the_model_reads_the_whole_vocabulary_and_still_matches(
        llm: llama_cpp.Llama, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy looks near the top of the logits first; what it cannot find there, it reads all."""
    schema = {"type": "object", "properties": {"code": {"enum": ["qzxv", "wkjq"]}},
              "required": ["code"], "additionalProperties": False}
    grammar = grammar_for(json.dumps(schema))
    tokens = _prompt(llm, "Say hello.")
    _primed(llm, tokens)
    theirs = _take(llm, llm.generate(tokens, reset=True, grammar=grammar, **GREEDY), 40)
    whole: list[bool] = []
    pick = sampler.Sampler._pick

    def counted(self: Any, logits: np.ndarray, *, with_grammar: bool) -> int:
        whole.append(with_grammar)
        return pick(self, logits, with_grammar=with_grammar)

    monkeypatch.setattr(sampler.Sampler, "_pick", counted)
    ours = _take(llm, generate(llm, tokens, grammar=grammar, **GREEDY), 40)
    assert ours == theirs
    assert json.loads(llm.detokenize(ours).decode())["code"] in ("qzxv", "wkjq")
    assert True in whole  # the near-top candidates did not hold the grammar's choice
