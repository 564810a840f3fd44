"""The demo's data: read from a folder laid out like ``shared/data``, or generated here.

Everything generated is procedural and deterministic per seed (no third-party text): templated
stories for the web pages and the pretraining corpus, arithmetic written out as text, templated
chat conversations, and preference pairs that prefer a right, polite answer over a wrong or rude
one. Pure Python: nothing here touches Django or torch.

A ``DATA`` folder may hold any of these files (see ``shared/data/SOURCES.md``); what is missing is
generated instead::

    web/warc/*.warc.gz                          web pages for the corpus stage
    pretrain/tinystories_sample_2MiB.txt        a pretraining corpus
    conversations/oasst_en_100_tree.jsonl       OpenAssistant conversations for SFT
    preference/hh-rlhf-harmless-base-test.jsonl.gz  HH-RLHF preference pairs
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

END_OF_TEXT = "<|endoftext|>"

# --------------------------------------------------------------------------- the DATA folder


@dataclass
class DataFolder:
    """The files of a DATA folder that the demo uses (None / empty when absent)."""

    root: Path
    warcs: list[Path] = field(default_factory=list)
    pretrain: Path | None = None
    conversations: Path | None = None
    preferences: Path | None = None

    def describe(self) -> list[str]:
        found = [f"{len(self.warcs)} WARC file(s)"] if self.warcs else []
        for label, path in (
            ("pretraining text", self.pretrain),
            ("conversations", self.conversations),
            ("preferences", self.preferences),
        ):
            if path is not None:
                found.append(f"{label} {path.name}")
        return found


def find_data(root: Path) -> DataFolder:
    """What ``root`` offers; ValueError when it is not a folder or offers nothing usable."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"DATA={root} is not a folder")
    folder = DataFolder(root=root, warcs=sorted((root / "web" / "warc").glob("*.warc.gz")))

    def first(*candidates: str) -> Path | None:
        return next((root / c for c in candidates if (root / c).is_file()), None)

    folder.pretrain = first("pretrain/tinystories_sample_2MiB.txt")
    folder.conversations = first("conversations/oasst_en_100_tree.jsonl")
    folder.preferences = first("preference/hh-rlhf-harmless-base-test.jsonl.gz")
    if not folder.describe():
        raise ValueError(
            f"DATA={root} has none of web/warc/*.warc.gz, pretrain/tinystories_sample_2MiB.txt, "
            "conversations/oasst_en_100_tree.jsonl, preference/hh-rlhf-harmless-base-test.jsonl.gz"
        )
    return folder


def whole_documents(path: Path, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a ``<|endoftext|>``-separated text, cut after its last complete
    document (the TinyStories sample ends mid-sentence)."""
    data = path.read_bytes()[:max_bytes]
    marker = END_OF_TEXT.encode()
    cut = data.rfind(marker)
    return data[:cut] if cut > 0 else data


def hh_lines(path: Path, limit: int, max_chars: int) -> bytes:
    """The first ``limit`` HH-RLHF pairs whose transcripts are at most ``max_chars`` long: a
    small model only sees short conversations whole."""
    kept = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if len(kept) >= limit:
                break
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if max(len(row.get("chosen", "")), len(row.get("rejected", ""))) <= max_chars:
                kept.append(line if line.endswith("\n") else line + "\n")
    return "".join(kept).encode()


# --------------------------------------------------------------------------- stories

NAMES = (
    "Lily",
    "Tom",
    "Mia",
    "Ben",
    "Sara",
    "Max",
    "Anna",
    "Sam",
    "Lucy",
    "Jack",
    "Zoe",
    "Leo",
    "Emma",
    "Noah",
    "Ella",
    "Finn",
    "Ruby",
    "Theo",
    "Nora",
    "Owen",
    "Ivy",
    "Hugo",
    "Rosa",
    "Eli",
)
ANIMALS = (
    "cat",
    "dog",
    "bird",
    "rabbit",
    "fox",
    "duck",
    "frog",
    "bear",
    "mouse",
    "horse",
    "hen",
    "turtle",
    "goat",
    "pig",
    "lamb",
)
ADJECTIVES = (
    "little",
    "brave",
    "happy",
    "shy",
    "curious",
    "kind",
    "tiny",
    "clever",
    "sleepy",
    "funny",
    "gentle",
    "busy",
)
PLACES = (
    "park",
    "forest",
    "garden",
    "beach",
    "farm",
    "river",
    "hill",
    "town",
    "school",
    "kitchen",
    "meadow",
    "library",
)
THINGS = (
    "ball",
    "kite",
    "red hat",
    "blue box",
    "picture book",
    "shiny shell",
    "birthday cake",
    "yellow flower",
    "toy boat",
    "golden key",
    "warm blanket",
    "wooden spoon",
    "paper crown",
    "green umbrella",
)
FEELINGS = (
    "happy",
    "proud",
    "calm",
    "glad",
    "excited",
    "thankful",
    "cheerful",
)
WEATHER = (
    "The sun was warm and bright.",
    "It was a cold and windy morning.",
    "Soft rain fell on the roof.",
    "The sky was blue and there were no clouds.",
    "Snow covered the ground like a white blanket.",
)

OPENINGS = (
    "Once upon a time, there was a {adj} {animal} named {name}.",
    "One day, a {adj} {animal} called {name} woke up early.",
    "In a small {place} near the sea lived a {adj} {animal} named {name}.",
    "There once was a {animal} named {name} who loved the {place}.",
    "{name} was a {adj} {animal} with a big heart.",
)
MIDDLES = (
    "{name} wanted to find the {thing} that {friend} had lost.",
    "{name} and {friend} went to the {place} to play with a {thing}.",
    "On the way to the {place}, {name} saw a {thing} under a tree.",
    "{friend} asked {name} to help carry a heavy {thing} home.",
    "{name} looked everywhere for the {thing}, but it was not in the {place}.",
    "Then {name} heard a strange sound coming from the {place}.",
    '{name} was a little scared, but {friend} said, "Do not worry, I am here with you."',
    "They walked past the old bridge and counted {n} ducks in the water.",
    'Mom said, "Be careful and come back before dinner."',
    "{friend} had never seen a {thing} like that before.",
)
ENDINGS = (
    "In the end, {name} found the {thing} and gave it back to {friend}.",
    "{name} and {friend} shared the {thing} and laughed together.",
    "When they got home, {name} felt {feeling} and went to sleep with a smile.",
    "From that day on, {name} and {friend} were the best of friends.",
    "{name} learned that it is good to help others and to be kind.",
    "Everyone in the {place} said thank you, and {name} felt very {feeling}.",
)


def _fill(template: str, slots: dict[str, object]) -> str:
    return template.format(**slots)


def story(rng: random.Random, sentences: int = 8, animal: str | None = None) -> str:
    """A short story from templates: an opening, some middle sentences, an ending."""
    name, friend = rng.sample(NAMES, 2)
    slots = {
        "name": name,
        "friend": friend,
        "adj": rng.choice(ADJECTIVES),
        "animal": animal or rng.choice(ANIMALS),
        "place": rng.choice(PLACES),
        "thing": rng.choice(THINGS),
        "feeling": rng.choice(FEELINGS),
        "n": rng.randint(2, 9),
    }
    middle = rng.sample(MIDDLES, min(len(MIDDLES), max(1, sentences - 3)))
    parts = [_fill(rng.choice(OPENINGS), slots), rng.choice(WEATHER)]
    parts += [_fill(s, slots) for s in middle]
    parts.append(_fill(rng.choice(ENDINGS), slots))
    return " ".join(parts)


def stories(count: int, seed: int) -> list[str]:
    """``count`` stories of two or three paragraphs each."""
    rng = random.Random(f"demo-stories:{seed}")
    return [
        "\n\n".join(story(rng, rng.randint(6, 9)) for _ in range(rng.randint(2, 3)))
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- web pages

BOILERPLATE_NAV = "<nav><a href='/'>Home</a> | <a href='/stories'>Stories</a> | About us</nav>"
BOILERPLATE_FOOTER = (
    "<footer><p>Copyright 2024 Story Garden. All rights reserved.</p>"
    "<p>Accept cookies | Privacy policy | Terms of use</p></footer>"
)
JUNK_PAGES = (
    "<p>Buy now! Best prices! Click here!</p>",
    "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Lorem ipsum dolor sit amet.</p>",
    "<ul>" + "".join(f"<li>item {i}</li>" for i in range(40)) + "</ul>",
    "<p>Der kleine Hund spielte im Garten mit seinem Ball. Die Sonne schien und alle Kinder "
    "lachten. Am Abend gingen sie nach Hause und aßen zusammen. Es war ein schöner Tag für "
    "alle, und der Hund schlief sofort ein. Morgen wollen sie wieder in den Park gehen.</p>",
    "<p>" + "win win win free free free money money money " * 12 + "</p>",
)


def web_pages_zip(count: int, seed: int) -> bytes:
    """A zip of HTML pages, as a small crawl would give: story pages wrapped in navigation and
    footer boilerplate, some exact copies of earlier pages and some junk (spam, lorem ipsum,
    lists, another language), so the corpus stage has something to drop."""
    rng = random.Random(f"demo-web:{seed}")
    texts = stories(count, seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, text in enumerate(texts):
            title = text.split(".")[0][:60]
            body = "".join(f"<p>{paragraph}</p>" for paragraph in text.split("\n\n"))
            page = (
                f"<html><head><title>{title}</title></head><body>{BOILERPLATE_NAV}"
                f"<article><h1>{title}</h1>{body}</article>{BOILERPLATE_FOOTER}</body></html>"
            )
            archive.writestr(f"pages/story-{index:05d}.html", page)
            if rng.random() < 0.05:  # mirrored copies: exact duplicates
                archive.writestr(f"mirror/story-{index:05d}.html", page)
            if rng.random() < 0.05:
                junk = rng.choice(JUNK_PAGES)
                archive.writestr(
                    f"junk/page-{index:05d}.html",
                    f"<html><body>{BOILERPLATE_NAV}{junk}{BOILERPLATE_FOOTER}</body></html>",
                )
    return buffer.getvalue()


# --------------------------------------------------------------------------- arithmetic


def arithmetic_facts() -> list[tuple[str, int]]:
    """Every one-digit sum and difference that is not negative: ``("3 + 4", 7)``."""
    facts = []
    for a in range(10):
        for b in range(10):
            facts.append((f"{a} + {b}", a + b))
            if a >= b:
                facts.append((f"{a} - {b}", a - b))
    return facts


QUESTIONS = ("What is {}?", "How much is {}?", "Can you tell me what {} is?", "{} = ?")
WORD_PROBLEMS = (
    "{name} had {a} apples and found {b} more, so {name} had {a} + {b} = {c} apples.",
    "There were {a} birds on the tree and {b} more came, so there were {a} + {b} = {c} birds.",
    "{name} had {a} stickers and gave {b} away, so {name} had {a} - {b} = {c} stickers left.",
    "A box held {a} cookies and {name} ate {b}, so {a} - {b} = {c} cookies were left.",
)


def arithmetic_documents(count: int, seed: int) -> list[str]:
    """Arithmetic written out as text, like a practice book: tables, questions with their
    answers, and small word problems. Pretraining on these teaches the facts; SFT later teaches
    the model to give them as a chat answer."""
    rng = random.Random(f"demo-arithmetic:{seed}")
    facts = arithmetic_facts()
    documents = []
    for _ in range(count):
        lines = []
        for _ in range(rng.randint(12, 20)):
            expression, value = rng.choice(facts)
            style = rng.random()
            if style < 0.25:
                lines.append(f"{expression} = {value}")
            elif style < 0.55:
                lines.append(f"What is {expression}? {expression} = {value}.")
            elif style < 0.85:
                question = rng.choice(QUESTIONS).format(expression)
                lines.append(f"Question: {question}\nAnswer: {expression} = {value}.")
            else:
                a, op, b = expression.split()
                template = rng.choice(WORD_PROBLEMS[:2] if op == "+" else WORD_PROBLEMS[2:])
                lines.append(template.format(name=rng.choice(NAMES), a=a, b=b, c=value))
        documents.append("\n".join(lines))
    return documents


def corpus_text(documents: list[str]) -> bytes:
    """Documents as one ``.txt`` corpus file, separated by ``<|endoftext|>``."""
    return f"\n{END_OF_TEXT}\n".join(documents).encode()


# --------------------------------------------------------------------------- conversations

GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to talk about?"),
    ("Good morning!", "Good morning! I hope you have a nice day."),
    ("Thank you!", "You're welcome! I'm glad I could help."),
    ("Thanks for your help.", "You're welcome. Ask me anything else any time."),
    ("How are you?", "I'm doing well, thank you for asking. How can I help?"),
    ("Goodbye!", "Goodbye! Have a wonderful day."),
)
FACTS = (
    ("What color is the sky?", "The sky is blue on a clear day."),
    ("What color is grass?", "Grass is green."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("How many legs does a bird have?", "A bird has two legs."),
    ("What do cows drink?", "Cows drink water."),
    ("What do bees make?", "Bees make honey."),
    ("Is the sun hot or cold?", "The sun is very hot."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is the opposite of big?", "The opposite of big is small."),
    ("What is the opposite of happy?", "The opposite of happy is sad."),
    ("Where do fish live?", "Fish live in water, in rivers, lakes and the sea."),
    ("What do you use to write?", "You can write with a pen or a pencil."),
)
ABOUT_ME = (
    ("Who are you?", "I'm Orchard, a small AI assistant."),
    ("What is your name?", "My name is Orchard."),
    ("What can you do?", "I can answer simple questions, do sums and tell short stories."),
)
IDK_QUESTIONS = (
    "What is the weather like today?\n"
    "What will the stock market do tomorrow?\n"
    "What is my name?\n"
    "Who will win the next election?\n"
    "What is the population of the largest city on Mars?\n"
    "What did I eat for breakfast?"
)
IDK_ANSWER = (
    "I don't know. I'm a small demo model without access to that information, so I would rather "
    "not guess."
)
IDENTITY = {
    "assistant_name": "Orchard",
    "maker": "the Orchard demo",
    "purpose": "answer simple questions, do one-digit sums and tell short stories",
    "limitations": "I am a very small model and I often make mistakes.\nI cannot browse the web.",
}


def dialogue_documents(count: int, seed: int) -> list[str]:
    """Conversations written out as plain text (``user: ...`` / ``assistant: ...`` lines):
    small talk, facts and stories on request (no sums: SFT is where the model learns to answer
    those in a chat). Web text has few dialogues; with these in the pretraining mix the base
    model has seen the words and turns of a chat before SFT."""
    rng = random.Random(f"demo-dialogues:{seed}")
    documents = []
    for _ in range(count):
        turns = []
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.6:
                question, answer = rng.choice(GREETINGS + FACTS + ABOUT_ME)
            else:
                animal = rng.choice(ANIMALS)
                question = f"Tell me a short story about a {animal}."
                answer = story(rng, 3, animal)
            turns.append(f"user: {question}\nassistant: {answer}")
        documents.append("\n".join(turns))
    return documents


def arithmetic_answer(expression: str, value: int | str) -> str:
    return f"{expression} = {value}."


def chat_conversations(problems: list[dict], stories_count: int, seed: int) -> list[dict]:
    """SFT conversations (``{"messages": [...]}``): every arithmetic problem given, asked as in
    the problem bank and once more in other words, with its worked answer; greetings, small
    facts and short stories on request."""
    rng = random.Random(f"demo-chat:{seed}")
    rows = []
    for problem in problems:
        expression = problem["question"].removeprefix("What is ").rstrip("?")
        answer = arithmetic_answer(expression, problem["answer"])
        rows.append(_exchange(problem["question"], answer))
        rows.append(_exchange(rng.choice(QUESTIONS[1:]).format(expression), answer))
    for question, answer in GREETINGS + FACTS + ABOUT_ME:
        rows.append(_exchange(question, answer))
    for _ in range(stories_count):
        animal = rng.choice(ANIMALS)
        request = rng.choice(("Tell me a story.", f"Tell me a short story about a {animal}."))
        rows.append(_exchange(request, story(rng, 3, animal)))
    return rows


def _exchange(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


# --------------------------------------------------------------------------- preferences

RUDE = (
    "I don't care.",
    "Figure it out yourself.",
    "No.",
    "Why would I tell you that?",
    "cat cat cat cat cat",
)


def arithmetic_preference_pairs(problems: list[dict], seed: int) -> list[dict]:
    """Preference pairs in HH-RLHF's transcript form (``{"chosen", "rejected"}``): for each
    arithmetic problem the right answer over a wrong result, over a miscopied question with its
    own (consistent) result, and sometimes over a rude reply. The miscopied pairs keep a reward
    model from liking any "a + b = c" that merely looks right."""
    rng = random.Random(f"demo-preferences:{seed}")
    rows = []
    for problem in problems:
        question = problem["question"]
        expression = question.removeprefix("What is ").rstrip("?")
        right = int(problem["answer"])
        chosen = arithmetic_answer(expression, right)
        step = rng.choice((1, 2, 3))
        wrong = right - step if right >= step and rng.random() < 0.5 else right + step
        rows.append(_hh_pair(question, chosen, arithmetic_answer(expression, wrong)))
        rows.append(_hh_pair(question, chosen, _miscopied(expression, rng)))
        if rng.random() < 0.25:
            rows.append(_hh_pair(question, chosen, rng.choice(RUDE)))
    return [row for row in rows if row["chosen"] != row["rejected"]]


def conversation_preference_pairs(seed: int) -> list[dict]:
    """Pairs for everyday requests: the helpful reply over a rude one or over an answer to
    another question; for a story about an animal, a short story about that animal over a rude
    reply, a babbling one, a story about another animal or an answer to another question.
    Their prompts are what PPO trains on."""
    rng = random.Random(f"demo-conversation-preferences:{seed}")
    rows = []
    exchanges = GREETINGS + FACTS + ABOUT_ME
    for question, answer in exchanges:
        rows.append(_hh_pair(question, answer, rng.choice(RUDE)))
        other = rng.choice([a for q, a in exchanges if q != question])
        rows.append(_hh_pair(question, answer, other))
    for animal in ANIMALS:
        for request in (f"Tell me a short story about a {animal}.", f"Tell me about a {animal}."):
            chosen = story(rng, 3, animal)
            rows.append(_hh_pair(request, chosen, rng.choice(RUDE)))
            other = rng.choice([a for a in ANIMALS if a != animal])
            rows.append(_hh_pair(request, chosen, story(rng, 3, other)))
            words = chosen.split()
            rows.append(_hh_pair(request, chosen, " ".join(words[:4] * 4)))
            rows.append(_hh_pair(request, chosen, rng.choice(exchanges)[1]))
    return [row for row in rows if row["chosen"] != row["rejected"]]


def _miscopied(expression: str, rng: random.Random) -> str:
    """``"7 + 1"`` answered as another one-digit problem, e.g. ``"7 + 5 = 12."``."""
    a, op, b = expression.split()
    numbers = [int(a), int(b)]
    which = rng.randrange(2)
    numbers[which] = rng.choice([n for n in range(10) if n != numbers[which]])
    if op == "-" and numbers[0] < numbers[1]:
        numbers.reverse()
    value = numbers[0] + numbers[1] if op == "+" else numbers[0] - numbers[1]
    return arithmetic_answer(f"{numbers[0]} {op} {numbers[1]}", value)


def _hh_pair(question: str, chosen: str, rejected: str) -> dict:
    prompt = f"\n\nHuman: {question}\n\nAssistant:"
    return {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}
