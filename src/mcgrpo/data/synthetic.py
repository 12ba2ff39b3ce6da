"""A synthetic reading-comprehension set the project makes itself (no download, no licence terms).

Each passage states facts about a few people; each question asks for one fact, so the answer is
readable from the passage. Used by the offline demo and to check that GRPO can learn at all.
"""

import random

NAMES = ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
         "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara"]
FACTS = {
    "fruit": ("{n}'s favourite fruit is {v}.", "What is {n}'s favourite fruit?",
              ["apple", "mango", "pear", "cherry", "banana", "plum", "grape", "lemon"]),
    "city": ("{n} lives in {v}.", "Where does {n} live?",
             ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Rome", "Delhi"]),
    "pet": ("{n} has a pet {v}.", "What pet does {n} have?",
            ["cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goldfish", "horse"]),
    "job": ("{n} works as a {v}.", "What is {n}'s job?",
            ["teacher", "doctor", "farmer", "pilot", "baker", "nurse", "painter", "driver"]),
    "sport": ("At the weekend, {n} plays {v}.", "Which sport does {n} play at the weekend?",
              ["tennis", "football", "chess", "golf", "hockey", "rugby", "cricket", "volleyball"]),
}
FILL_IN = {"fruit": "{n}'s favourite fruit is _ .", "city": "{n} lives in _ .", "pet": "{n} has a pet _ ."}


def make_synthetic_mc(n: int, seed: int = 0, n_options: int = 4) -> list[dict]:
    """n items in the table schema: id, context, question, options, answer (letter)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        people = rng.sample(NAMES, 3)
        facts = {p: {k: rng.choice(values) for k, (_, _, values) in FACTS.items()} for p in people}
        sentences = [FACTS[k][0].format(n=p, v=facts[p][k]) for p in people for k in rng.sample(sorted(FACTS), 3)]
        rng.shuffle(sentences)
        # Ask only about a fact the passage states.
        person, kind = next((p, k) for p, k in ((rng.choice(people), rng.choice(sorted(FACTS))) for _ in range(100))
                            if FACTS[k][0].format(n=p, v=facts[p][k]) in sentences)
        truth = facts[person][kind]
        options = rng.sample([v for v in FACTS[kind][2] if v != truth], n_options - 1)
        answer = rng.randrange(n_options)
        options.insert(answer, truth)
        template = FILL_IN[kind] if kind in FILL_IN and rng.random() < 0.3 else FACTS[kind][1]
        items.append({"id": f"syn-{seed}-{i}", "context": " ".join(sentences), "question": template.format(n=person),
                      "options": options, "answer": "ABCDEFGHIJ"[answer]})
    return items


def make_hinted_mc(n: int, seed: int = 0, n_options: int = 4) -> list[dict]:
    """Synthetic items whose question ends by naming the answer ("... (The answer is C.)").

    For the learnability check (benchmarks/learnability.py): copying a letter that sits a few tokens
    before the options is about the easiest conditional task there is. A model that can learn it
    (the `small` preset can; the 2-layer `tiny` one could not) must then learn it from the reward
    alone if reward -> advantage -> update is wired right.
    """
    return [{**item, "question": f"{item['question']} (The answer is {item['answer']}.)"}
            for item in make_synthetic_mc(n, seed=seed, n_options=n_options)]
