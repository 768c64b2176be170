"""The benchmark's prompts, and the exact token ids the server builds from them (system prompt, date, template)."""

from __future__ import annotations

from dataclasses import dataclass

from gptoss_space.prompting import PromptOptions, compose_messages, utc_now
from gptoss_space.protocol.request import ChatMessage
from gptoss_space.settings import Settings

# Every measurement gets its own subjects, so no prompt repeats an earlier one: a server with a
# prefix cache can reuse only what all prompts share (the template and the system prompt).
SUBJECTS = [
    "a dragon who learns to write software",
    "a lighthouse keeper on a remote island",
    "a robot that wants to become a chef",
    "two friends crossing a desert by camel",
    "a detective solving a mystery in Venice",
    "a young astronaut on her first mission to Mars",
    "a village baker who discovers a magic oven",
    "an old clockmaker and his curious apprentice",
    "a fox who runs a small bookshop",
    "a sailor lost in a winter storm",
    "a girl who can talk to trees",
    "a retired pilot restoring an old plane",
    "a musician travelling through the mountains",
    "a scientist who discovers a new colour",
    "a cat guarding a museum at night",
    "a boy building a raft to cross a lake",
    "a painter who loses her sight",
    "a knight afraid of horses",
    "a gardener growing a giant pumpkin",
    "a teacher in a school on the moon",
    "a thief who only steals books",
    "an inventor of strange umbrellas",
    "a whale that sings to ships",
    "a postman in a town of giants",
    "a chess player who never loses",
    "a mapmaker searching for a lost city",
    "a beekeeper and a curious bear",
    "a pair of twins separated at sea",
    "an owl who cannot sleep at night",
    "a chef cooking for a king",
    "a miner who finds a glowing stone",
    "a librarian guarding a secret door",
]

# Plain prose to fill long prompts; varied so that it tokenizes like text, not like a repeated token.
_FILLER = [
    "The river bent around the old mill, where the water ran slow and green under the willows.",
    "Every morning the merchants opened their shutters and argued about the price of salt and wool.",
    "In the library, a student copied maps of distant coasts by the light of a single candle.",
    "The storm arrived at dusk, rattling the windows and sending the gulls inland over the fields.",
    "A cart loaded with apples climbed the hill, its wheels creaking on the cobblestones.",
    "Nobody in the town remembered who had planted the great oak in the middle of the square.",
    "The engineers measured the bridge twice, then once more, before they let the first train cross.",
    "At the harbour, fishermen mended their nets and traded stories about the winter sea.",
]


@dataclass
class Prompt:
    user: str  # what a client sends as its one user message
    messages: list[dict]  # what the model sees: the server's system message first
    ids: list[int]  # the token ids the server prefills

    @property
    def tokens(self) -> int:
        return len(self.ids)


def server_messages(user: str, settings: Settings) -> list[dict]:
    """The messages our server composes from one user message (base system prompt, date and time)."""
    options = PromptOptions(settings.system_prompt, settings.inject_system_prompt, settings.inject_datetime)
    return compose_messages([ChatMessage(role="user", content=user)], options, utc_now())


def encode(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# Different first words for repeated measurements on the same subjects: a prefix cache then
# finds only the system prompt in common with an earlier request.
OPENINGS = ("Write a long, detailed story about {}.", "Tell a long, vivid tale about {}.", "Compose a long, gripping saga about {}.")


def story_prompt(tokenizer, settings: Settings, subject: str, target_tokens: int, opening: int = 0) -> Prompt:
    """A request for a long story, padded with background prose until the prompt has about target_tokens."""
    head = OPENINGS[opening % len(OPENINGS)].format(subject)

    def build(n_filler: int) -> Prompt:
        filler = " ".join(_FILLER[i % len(_FILLER)] for i in range(n_filler))
        user = head if not n_filler else f"{head} Use this background: {filler}"
        messages = server_messages(user, settings)
        return Prompt(user, messages, encode(tokenizer, messages))

    best = build(0)
    lo, hi = 0, max(1, target_tokens // 10)
    while build(hi).tokens < target_tokens:
        hi *= 2
    while lo < hi:  # the most filler that stays at or under the target
        mid = (lo + hi + 1) // 2
        p = build(mid)
        if p.tokens <= target_tokens:
            best, lo = p, mid
        else:
            hi = mid - 1
    return best


def prompt_set(tokenizer, settings: Settings, target_tokens: int, count: int, first: int = 0, opening: int = 0) -> list[Prompt]:
    """count prompts on SUBJECTS[first:first + count]."""
    return [
        story_prompt(tokenizer, settings, SUBJECTS[(first + i) % len(SUBJECTS)], target_tokens, opening) for i in range(count)
    ]
