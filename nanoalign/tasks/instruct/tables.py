"""
The ground of the `instruct` task: its name and splits, the fact tables its questions are made
from (no download), the values its instructions may take, and the split each fact belongs to.
Everything else in the package stands on this module; it imports none of them.
"""
import functools
import zlib
from itertools import combinations

NAME = "instruct"
SPLITS = ("train", "val", "test")

# -- fact tables -------------------------------------------------------------------------------------
CAPITALS = {  # country as it reads after "the capital of" -> capital
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
    "Australia": "Canberra", "Greece": "Athens", "Turkey": "Ankara", "Poland": "Warsaw",
    "Austria": "Vienna", "Hungary": "Budapest", "Sweden": "Stockholm", "Norway": "Oslo",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Switzerland": "Bern", "the Czech Republic": "Prague", "Kenya": "Nairobi",
    "Nigeria": "Abuja", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires",
    "Colombia": "Bogota", "Cuba": "Havana", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "the Philippines": "Manila", "South Korea": "Seoul", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Afghanistan": "Kabul", "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Ethiopia": "Addis Ababa", "Morocco": "Rabat",
    "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Iceland": "Reykjavik", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Jamaica": "Kingston", "New Zealand": "Wellington", "the United Kingdom": "London",
    "Brazil": "Brasilia", "the United States": "Washington", "Lebanon": "Beirut", "Syria": "Damascus",
    "Jordan": "Amman", "Qatar": "Doha", "Ghana": "Accra", "Senegal": "Dakar", "Uganda": "Kampala",
    "Zimbabwe": "Harare", "Mongolia": "Ulaanbaatar", "Malaysia": "Kuala Lumpur",
    "Cambodia": "Phnom Penh", "Mexico": "Mexico City",
}
ALIASES = {"Kyiv": ["Kiev"], "Bogota": ["Bogotá"], "Brasilia": ["Brasília"]}
# the big cities a model confuses with capitals: answer-like mentions too, and the written mistakes
DISTRACTORS = {"Turkey": "Istanbul", "Australia": "Sydney", "Canada": "Toronto", "Brazil": "Rio de Janeiro",
               "Switzerland": "Zurich", "Nigeria": "Lagos", "the United States": "New York",
               "Morocco": "Casablanca", "Vietnam": "Ho Chi Minh City", "New Zealand": "Auckland",
               "Pakistan": "Karachi", "China": "Shanghai", "India": "Mumbai", "Germany": "Munich",
               "Italy": "Milan", "Spain": "Barcelona", "South Africa": "Johannesburg"}
UNITS = [  # (one, many, into, factor): one <one> is <factor> <into>
    ("meter", "meters", "centimeters", 100), ("kilometer", "kilometers", "meters", 1000),
    ("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60), ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7), ("foot", "feet", "inches", 12), ("yard", "yards", "feet", 3),
    ("kilogram", "kilograms", "grams", 1000), ("liter", "liters", "milliliters", 1000),
    ("year", "years", "months", 12), ("gallon", "gallons", "quarts", 4), ("pound", "pounds", "ounces", 16),
    ("decade", "decades", "years", 10), ("century", "centuries", "years", 100),
]
LETTER_WORDS = ["strawberry", "banana", "mississippi", "bookkeeper", "committee", "balloon", "coffee",
                "letter", "pepper", "cherry", "bubble", "address", "success", "parallel", "necessary",
                "assessment", "possession", "tomorrow", "millennium", "raspberry", "engineering",
                "independence", "excellence", "difference", "chocolate", "elephant", "umbrella",
                "butterfly", "grasshopper", "hippopotamus", "kangaroo", "mammal", "dinosaur", "volcano",
                "alphabet", "calendar", "broccoli", "spaghetti", "vanilla", "pineapple", "cinnamon",
                "referee", "giraffe", "beginning", "occurrence", "embarrass", "accommodate", "rhythm",
                "lollipop", "zucchini"]
SORT_WORDS = ["apple", "bread", "candle", "door", "eagle", "forest", "guitar", "honey", "island",
              "jacket", "kettle", "lemon", "mountain", "needle", "orange", "pencil", "queen", "river",
              "sugar", "tiger", "violin", "window", "yellow", "zebra"]
# the values an instruction may take (generate.py draws them, wording.py accepts only them)
KEYWORDS = ["result", "indeed", "certainly", "simply", "clearly", "surely"]
END_PHRASES = ["Hope this helps.", "That is all.", "Any other questions?", "Have a nice day.",
               "Thank you."]
JSON_KEYS = [("answer",), ("answer", "reason")]
MAX_WORDS = [5, 6, 8, 10, 12, 15, 20]
BULLETS = [2, 3]
# the number words a response may use (scoring.py reads them as numbers)
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update(once=1, twice=2, thrice=3)


# -- facts and their splits ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def facts(family):
    """{fact key: split}. A fact key is what must not cross splits: the unordered operand pair, the
    country, the conversion, the word, the set of words. 60/20/20 by a stable hash (crc32)."""
    if family == "sum":
        keys = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    elif family == "product":
        keys = [(a, b) for a in range(2, 13) for b in range(a, 13)]
    elif family == "capital":
        keys = sorted(CAPITALS)
    elif family == "units":
        keys = [u[0] for u in UNITS]
    elif family == "letters":
        keys = list(LETTER_WORDS)
    elif family == "sort":
        keys = [c for r in (3, 4) for c in combinations(SORT_WORDS, r)]
    else:
        raise KeyError(family)
    keys = sorted(keys, key=lambda k: (zlib.crc32(f"{family}:{k}".encode()), str(k)))
    n = len(keys)
    cut1, cut2 = round(0.6 * n), round(0.8 * n)
    return {k: "train" if i < cut1 else "val" if i < cut2 else "test" for i, k in enumerate(keys)}


def fact_key(spec):
    f = spec["fact"]
    return {"sum": lambda: tuple(sorted((f["a"], f["b"]))), "product": lambda: tuple(sorted((f["a"], f["b"]))),
            "capital": lambda: f["country"], "units": lambda: f["one"], "letters": lambda: f["word"],
            "sort": lambda: tuple(sorted(f["words"]))}[spec["family"]]()
