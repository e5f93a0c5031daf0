"""The sentences of the demo corpus: how web pages and alt texts talk about handwritten digits.

Real interleaved documents relate text to images in a few typical ways, and the demo keeps all of them so the model
has something to learn and something to ignore:
  - text before an image that names what follows ("Here is a handwritten seven."),
  - text after it that describes it ("The digit above is a 7, written with a shaky stroke."),
  - figure captions, one sentence for a group of images ("Here are two fours from the same writer."),
  - distractor sentences about something else, some with numbers in them,
  - images whose best sentence is a distractor (low similarity, dropped by the 0.24 threshold).
Everything is drawn from the numpy Generator passed in, so the corpus is a pure function of its seed.
"""
import numpy as np

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
# What tells each digit apart: the kind of sentence a careful writer adds after a picture.
FEATURES = ("closed oval", "single upright stroke", "curved top and flat base", "two stacked curves",
            "open triangle at the top", "flat cap and round belly", "loop at the bottom", "long diagonal stroke",
            "two stacked loops", "loop at the top")

# Ink colours the images are rendered with (RGB); the text names them, so colour words are grounded too.
INK_COLORS = {"black": (20, 20, 24), "blue": (28, 52, 170), "red": (180, 30, 36), "green": (24, 120, 48),
              "purple": (104, 40, 140), "brown": (110, 70, 30)}
INK_NAMES = tuple(INK_COLORS)

ADJECTIVES = ("neat", "shaky", "bold", "thin", "slanted", "careful", "hurried", "rounded", "narrow", "wide")
MANNERS = ("in one quick motion", "slowly and carefully", "with a heavy hand", "with a light touch",
           "without lifting the pen", "in two strokes", "a little off centre", "with a tiny hook at the end")
WRITERS = ("my grandmother", "a student", "the teacher", "one volunteer", "a left-handed writer", "my neighbour",
           "a postal clerk", "our youngest reader", "an engineer", "a retired typesetter")
SIDES = ("left", "right")

INTRO = (
    "Here is a handwritten {name}.",
    "The next sample shows the digit {num}.",
    "Below you can see how {writer} writes {a_name}.",
    "This one is {a_name}.",
    "Next up: a {adj} {num}.",
    "Look at this {name}, drawn {manner}.",
    "{Writer} wrote the number {name} like this.",
    "The following scan is {a_num} in {color} ink.",
    "Now {a_name} that {writer} sent us.",
)
DESCRIBE = (
    "The digit above is {a_num}, written with a {adj} stroke.",
    "That was {a_name} in {color} ink.",
    "As you can see, the {name} leans slightly to the {side}.",
    "The scan above shows a {adj} {name}.",
    "Above: the number {num}, written {manner}.",
    "You can tell it is {a_name} from the {feature}.",
    "Notice the {feature}: it could only be {a_name}.",
    "{Writer} drew that {name} {manner}.",
)
CAPTION = (
    "Figure {fig}: a handwritten {num} in {color} ink.",
    "Fig. {fig}. A {adj} {name}.",
    "Sample {fig} ({name}, {color} ink).",
)
GROUP = (
    "Here are two {plural} from the same writer.",
    "Two {plural}, both written by {writer}.",
    "Compare these two {plural}.",
)

OPENINGS = (
    "Notes from {writer}'s handwriting class, week {n}.",
    "Another batch of scanned digits arrived on {day}.",
    "Our archive of postal codes keeps growing, part {n}.",
    "Welcome back to the digit diaries, entry {n}.",
    "A few samples from the {day} workshop.",
    "What I learned sorting mail by hand, chapter {n}.",
)
CLOSINGS = (
    "Thanks for reading, and see you next {day}.",
    "More samples will follow soon.",
    "Leave a comment if you recognise the handwriting.",
    "That is all for today.",
    "Next time we look at letters instead of numbers.",
)
DISTRACTORS = (
    "The weather was grey that morning.",
    "Our class meets on Tuesdays in the old library.",
    "Postal codes were sorted by hand for decades.",
    "The scanner in the basement still works after twenty years.",
    "Coffee helps, but only until noon.",
    "Most people hold the pen between thumb and index finger.",
    "Some schools still teach cursive writing.",
    "We keep the paper in a dry cupboard so it does not curl.",
    "My phone number ends in {n}.",
    "The bus to the museum leaves at {hour} o'clock.",
    "I bought a new notebook with squared paper.",
    "Fountain pens need a little patience.",
    "The garden needs water after a dry week.",
    "Someone left a blue umbrella at the front desk.",
    "Registration for the spring course opens on {day}.",
    "The library closes early during the holidays.",
    "A good lamp makes long evenings of writing easier.",
    "Our cat sleeps on the warm printer.",
    "Recycling day is every second {day}.",
    "We counted {n} letters in the mailbox this morning.",
    "The train was late again.",
    "It took {n} minutes to scan the whole stack.",
    "Please remember to label every envelope.",
    "The soup recipe calls for three carrots and an onion.",
    "A pencil sharpener is the most borrowed object in the room.",
    "Old typewriters make a lovely noise.",
    "The wind knocked over the sign outside.",
    "We moved the desks closer to the window.",
    "Ink stains are hard to remove from cotton.",
    "The printer ran out of toner on {day}.",
    "Some letters arrive without any stamp at all.",
    "The choir practises in the hall next door.",
    "Every drawer in the office is full of rubber bands.",
    "The museum shows maps from the last century.",
    "A volunteer brought cake for everyone.",
    "Handwriting changes a little with age.",
    "The room smells of paper and dust.",
    "Street names were painted on the corners by hand.",
    "We store the finished scans on two separate disks.",
    "A clear desk makes sorting faster.",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# LAION-style alt texts: short, sometimes terse, sometimes noise (as real alt texts are).
LAION_CAPTIONS = (
    "handwritten digit {num}",
    "a {adj} handwritten {name} in {color} ink",
    "{Name} written by hand, scanned at low resolution",
    "number {num} | handwriting sample",
    "close-up of a hand-drawn {name}",
    "digit {num}, written {manner}",
    "stock image: the numeral {num} written in {color}",
    "{color} ink {name} on white paper",
    "{a_name} drawn by {writer}",
)
LAION_NOISE = ("IMG_{n}.jpg", "free download", "click to enlarge", "untitled scan {n}")

# Prompts a zero-shot evaluator can fill with NAMES (the same wording the documents use before an image).
EVAL_TEMPLATES = ("Here is a handwritten {}.", "Next up: a neat {}.", "Look at this {}.")


def pick(rng, options):
  """One of `options`, uniformly."""
  return options[int(rng.integers(len(options)))]


def fill(template, rng, digit=None, color=None, fig=None):
  """Fills a template; every field is drawn even if unused, so the draw count does not depend on the template."""
  writer = pick(rng, WRITERS)
  values = dict(
      adj=pick(rng, ADJECTIVES), manner=pick(rng, MANNERS), writer=writer, Writer=writer[0].upper() + writer[1:],
      side=pick(rng, SIDES), day=pick(rng, DAYS), n=int(rng.integers(2, 99)), hour=int(rng.integers(6, 12)),
      fig=fig, color=color)
  if digit is not None:
    article = "an" if digit == 8 else "a"  # "an eight", "an 8"
    values.update(name=NAMES[digit], Name=NAMES[digit].capitalize(), num=str(digit), plural=PLURALS[digit],
                  feature=FEATURES[digit], a_name=f"{article} {NAMES[digit]}", A_name=f"{article.capitalize()} "
                  f"{NAMES[digit]}", a_num=f"{article} {digit}")
  return template.format(**values)


def eval_caption(digit, color):
  """The caption stored with each held-out image (retrieval queries)."""
  return f"a handwritten {NAMES[digit]} in {color} ink"
