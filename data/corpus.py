"""A small English corpus generated from a probabilistic grammar of short stories.

Nothing can be downloaded in tests or smoke runs, so the project writes its own text: stories
about a few characters, places and objects, with agreement between a story's sentences (the
hero keeps their name and pronoun), so a language model has short- and long-range structure
to learn. Deterministic: the same seed gives the same text on every machine.
"""

from __future__ import annotations

import random

NAMES = [("Tom", "he", "his"), ("Lily", "she", "her"), ("Sam", "he", "his"),
         ("Mia", "she", "her"), ("Ben", "he", "his"), ("Anna", "she", "her")]
ANIMALS = ["dog", "cat", "bird", "fox", "frog", "duck"]
PLACES = ["park", "garden", "forest", "beach", "house", "river"]
THINGS = ["ball", "kite", "box", "hat", "cake", "book", "boat", "flower"]
COLOURS = ["red", "blue", "green", "big", "little", "shiny"]
FEELINGS = ["happy", "sad", "scared", "proud", "tired", "surprised"]
TIMES = ["One day", "Once upon a time", "In the morning", "After lunch", "One sunny day"]


def story(rng: random.Random) -> str:
    """One story of 4-7 sentences."""
    name, he, his = rng.choice(NAMES)
    friend = rng.choice([n for n in NAMES if n[0] != name])[0]
    animal, place, thing = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(THINGS)
    colour = rng.choice(COLOURS)
    s = [f"{rng.choice(TIMES)}, {name} went to the {place}."]
    s.append(rng.choice([
        f"{he.capitalize()} saw a {colour} {thing} under a tree.",
        f"There {name} found a {colour} {thing}.",
        f"{he.capitalize()} had a {colour} {thing} in {his} bag.",
    ]))
    for _ in range(rng.randint(1, 4)):
        s.append(rng.choice([
            f"A {animal} came and looked at the {thing}.",
            f"{name} played with the {thing} and {friend}.",
            f"{friend} said, \"Can I have the {thing}?\"",
            f"The {animal} ran to the {place} with the {thing}.",
            f"{he.capitalize()} felt {rng.choice(FEELINGS)}.",
            f"{name} and {friend} shared the {thing}.",
        ]))
    s.append(rng.choice([
        f"In the end, {name} was {rng.choice(FEELINGS)} and went home.",
        f"Then {he} went home with {his} {thing}.",
        f"{name} said thank you to {friend}.",
    ]))
    return " ".join(s)


def generate(n_chars: int, seed: int = 0) -> str:
    """Stories separated by blank lines until the text has at least ``n_chars`` characters."""
    rng = random.Random(seed)
    parts, total = [], 0
    while total < n_chars:
        parts.append(story(rng))
        total += len(parts[-1]) + 2
    return "\n\n".join(parts) + "\n"
