"""A small English lexicon for finding entities and their modifiers in prompts without a parser.

Roles: ``function`` (determiners, prepositions, conjunctions, auxiliaries, numerals, pronouns: never grouped),
``modifier`` (adjectives and intensifying adverbs), ``noun``, ``verb`` (participles such as "sitting": skipped),
``punct``. Words not listed get a role from their ending, nouns being the default, so the lists only need the
common words and the exceptions to the endings (``bed`` is a noun although it ends in -ed, ``puppy`` although -y).
"""
from __future__ import annotations

FUNCTION = set("""
a an the this that these those some any each every no another other such
and or nor but so yet plus
of in on at to from by with without within into onto upon over under above below beneath behind beside besides
between among near next through across along around against toward towards inside outside underneath
up down off out while where when which who whom whose what as than like
is are was were be been being am has have had having does do did will would can could shall should may might must
it its they them their he him his she her we us our you your i me my mine
one two three four five six seven eight nine ten eleven twelve many few several both all half
there here very-
""".split()) - {"very-"}

COLOURS = set("""
red green blue yellow orange purple violet pink brown black white gray grey silver gold golden beige cyan magenta
teal turquoise navy maroon crimson scarlet indigo lavender lilac olive khaki tan ivory cream emerald amber bronze
copper rose ruby azure charcoal coral mint peach plum rainbow multicolored colorful colourful blond blonde
""".split())

MATERIALS = set("""
wooden wood metal metallic steel iron glass plastic paper stone marble brick leather woolen wool cotton silk
velvet denim rubber ceramic porcelain crystal concrete bamboo wicker straw cardboard clay golden silver
""".split())

PATTERNS = set("""
checkered checked striped spotted dotted polka plaid floral patterned camouflage tiled spiky furry fluffy
hairy feathered scaly shiny glossy matte rough smooth soft hard fuzzy wrinkled horned winged bearded transparent
translucent sparkly glittery shaggy curly wavy
""".split())

SIZES_SHAPES = set("""
big small large tiny huge giant little tall short long wide narrow thick thin round square rectangular
triangular circular oval flat fat skinny slim heavy light high low deep shallow
""".split())

OTHER_MODIFIERS = set("""
old young new ancient modern vintage antique broken wet dry dirty clean empty full hot cold warm frozen
happy sad angry cute beautiful ugly pretty elegant fancy simple plain bright dark pale vivid neon glowing
rusty shabby worn torn sleepy hungry wild tame fierce friendly scary spooky cheerful lonely
wet open closed hollow solid sharp blunt electric wooden handmade cartoon realistic
""".split())

ADVERBS = set("""
very extremely really quite rather too slightly highly incredibly super deeply bright dark light pale
""".split())

MODIFIERS = COLOURS | MATERIALS | PATTERNS | SIZES_SHAPES | OTHER_MODIFIERS | ADVERBS

#: nouns that the endings below would misread, and the common objects and animals of the A&E / DVMP prompt sets
NOUNS = set("""
bed sled shed seed reed weed
puppy kitty bunny pony fairy baby lady city sky body berry cherry strawberry party toy boy guy key monkey donkey
turkey jelly teddy candy daisy lily poppy ivy honey money country family penny butterfly dragonfly fly
kitten chicken garden oven linen lantern mitten token children woman women man men
cat dog bird bear lion horse elephant monkey frog turtle rabbit mouse giraffe zebra tiger cow sheep pig duck
owl fox wolf deer goat fish shark whale dolphin penguin snake lizard squirrel koala panda camel
backpack glasses crown suitcase chair balloon bow car bowl bench clock apple table vase flower flowers
shirt pants hat shoes shoe dress sofa couch lamp cup mug plate book box bag umbrella sword shield robot stick
bicycle bike boat ship train bus truck plane house tree field branch beard man boy girl
""".split())

#: endings that usually mark a modifier (checked after the lists above)
MODIFIER_ENDINGS = ("ed", "en", "ic", "ous", "ful", "less", "ish", "y", "ive", "able", "ible", "al")
VERB_ENDINGS = ("ing",)

COPULAS = {"is", "are", "was", "were", "looks", "look", "seems", "seem", "appears", "appear", "be", "being"}
COORDINATORS = {"and", "or", "&", ","}


def role(word: str) -> str:
    """``function`` | ``modifier`` | ``noun`` | ``verb`` | ``punct`` for one lower-case word."""
    if not any(ch.isalnum() for ch in word):
        return "punct"
    if word in FUNCTION or word.isdigit():
        return "function"
    if word in NOUNS:
        return "noun"
    if word in MODIFIERS:
        return "modifier"
    if word.endswith(VERB_ENDINGS) and len(word) > 5:
        return "verb"
    if word.endswith(MODIFIER_ENDINGS) and len(word) > 4:
        return "modifier"
    return "noun"
