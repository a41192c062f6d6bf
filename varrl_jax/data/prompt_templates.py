"""Templates and word lists of the generated text-rendering prompts (make_prompts).

All of it is our own: scenes grouped by setting, each setting with the
carriers (things that bear text) that belong in it, region phrasings, text
styles, closing moods, and the vocabulary of the quoted texts. Nothing here
is taken from CVTG-2K; only the shape of its prompts is mimicked (a scene,
then 2-5 carriers each with its quoted text, optionally a style, then a mood).

Quoted texts are 1-4 words of letters and digits only: no apostrophes, so a
text never contains the quote mark that delimits it.
"""

from __future__ import annotations

# setting -> (scenes, carriers). A scene is a noun phrase that can follow
# 'A' / 'An' (the article is chosen by make_prompts).
SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
  'street': (
    (
      'busy downtown street corner',
      'quiet cobblestone alley',
      'rainy city street at night',
      'sunny seaside boardwalk',
      'narrow street in an old harbor town',
      'crowded night market',
      'row of shops on a snowy high street',
      'bus stop on a suburban road',
    ),
    (
      'street sign',
      'neon sign',
      'shop awning',
      'billboard',
      'bus stop poster',
      'hanging wooden sign',
      'sandwich board',
      'graffiti mural',
      'storefront window decal',
      'parking sign',
    ),
  ),
  'shop': (
    (
      'cozy bookstore window',
      'tiny corner bakery',
      'vintage record shop',
      'flower stall at a farmers market',
      'hardware store aisle',
      'candle shop counter',
      'bicycle repair shop',
      'toy store display',
    ),
    (
      'chalkboard',
      'price tag',
      'shelf label',
      'paper bag',
      'gift box',
      'glass jar label',
      'window banner',
      'receipt',
      'tote bag',
      'display card',
    ),
  ),
  'cafe': (
    (
      'sunlit cafe terrace',
      'retro diner counter',
      'busy noodle bar',
      'rustic farmhouse kitchen',
      'food truck at a street fair',
      'tea house with paper lanterns',
      'pizza place with a wood oven',
      'juice bar on the beach',
    ),
    (
      'menu board',
      'coffee cup',
      'ceramic mug',
      'napkin',
      'cake topper',
      'apron',
      'cookie box',
      'bottle label',
      'table tent card',
      'paper lantern',
    ),
  ),
  'office': (
    (
      'modern open plan office',
      'school classroom',
      'university lecture hall',
      'startup meeting room',
      'cluttered home desk',
      'public library reading room',
      'science lab bench',
      'hotel reception desk',
    ),
    (
      'whiteboard',
      'sticky note',
      'name badge',
      'notebook cover',
      'laptop sticker',
      'door plaque',
      'folder tab',
      'desk calendar',
      'book spine',
      'wall clock face',
    ),
  ),
  'event': (
    (
      'birthday party in a backyard',
      'wedding reception hall',
      'rock concert stage',
      'marathon finish line',
      'science fair booth',
      'outdoor movie night',
      'graduation ceremony',
      'charity bake sale',
    ),
    (
      'banner',
      'balloon',
      't-shirt',
      'ticket',
      'placard',
      'trophy plate',
      'guest book',
      'cake',
      'lanyard card',
      'flag',
    ),
  ),
  'travel': (
    (
      'train station platform',
      'airport departure hall',
      'mountain trailhead',
      'ferry deck on a windy day',
      'desert highway rest stop',
      'campsite by a lake',
      'ski lodge entrance',
      'harbor with fishing boats',
    ),
    (
      'departure board',
      'luggage tag',
      'trail marker',
      'road sign',
      'boat hull',
      'tent flap',
      'postcard',
      'passport cover',
      'wooden arrow sign',
      'map',
    ),
  ),
  'sports': (
    (
      'neighborhood basketball court',
      'indoor climbing gym',
      'soccer stadium at dusk',
      'boxing gym',
      'skate park',
      'rowing club boathouse',
      'bowling alley',
      'tennis club lounge',
    ),
    (
      'jersey',
      'scoreboard',
      'water bottle',
      'locker door',
      'gym bag',
      'cap',
      'skateboard deck',
      'team pennant',
      'medal ribbon',
      'towel',
    ),
  ),
}

# Every carrier of every setting also fits these scenes' generic props.
GENERIC_CARRIERS = ('poster', 'sign', 'sticker', 'label', 'card')

# How a region introduces its text; {c} the carrier with its article ('a
# weathered sign'), {t} the quoted text.
REGION_FORMS = (
  '{c} that says {t}',
  '{c} reading {t}',
  '{c} with the words {t}',
  '{c} printed with {t}',
  '{c} labeled {t}',
  '{c} showing {t}',
  '{c} bearing the text {t}',
  '{c} marked {t}',
)

# Carrier adjectives (optional, before the carrier).
CARRIER_LOOKS = (
  'weathered',
  'glossy',
  'hand painted',
  'faded',
  'bright',
  'small',
  'large',
  'crumpled',
  'brand new',
  'slightly tilted',
  'wooden',
  'metal',
)

# Text styles (optional, after the text: 'in ...').
STYLES = (
  'bold red letters',
  'neon pink script',
  'chalk handwriting',
  'gold serif type',
  'white stencil letters',
  'blue block capitals',
  'thin black sans serif',
  'curly brush lettering',
  'green retro type',
  'embossed silver letters',
  'orange marker',
  'typewriter font',
)

# How the region list joins the scene.
SCENE_FORMS = (
  '{scene} with {regions}',
  '{scene}, featuring {regions}',
  '{scene} where you can see {regions}',
  '{scene}; in view are {regions}',
  'A photo of {scene_lower} with {regions}',
)

MOODS = (
  'warm evening light',
  'soft morning sunlight',
  'overcast daylight',
  'cinematic lighting',
  'shot on 35mm film',
  'high detail, sharp focus',
  'golden hour glow',
  'moody blue hour',
  'bright studio lighting',
  'shallow depth of field',
  'wide angle view',
  'photorealistic',
)

# Vocabulary of the quoted texts: letters only, 2-9 letters.
ADJECTIVES = (
  'FRESH GRAND QUIET GOLDEN HAPPY WILD SILVER BRAVE SUNNY LUCKY CLEVER '
  'ROYAL SIMPLE URBAN COSMIC VELVET RAPID HUMBLE NOBLE SWEET SPICY '
  'MIGHTY GENTLE SECRET CRISP BRIGHT NORTHERN ELECTRIC ROSY HIDDEN '
  'OPEN FREE DAILY LOCAL TINY GIANT MODERN CLASSIC PURE SLOW'
).split()

NOUNS = (
  'BAKERY MARKET GARDEN STUDIO LIBRARY HARBOR KITCHEN TRAIL ROCKET MEADOW '
  'FOREST CANYON LANTERN COMPASS ORCHARD BRIDGE TIGER FALCON OTTER MAPLE '
  'PEPPER LEMON HONEY COFFEE NOODLES PIZZA TACOS BAGELS BREAD COOKIES '
  'RECORDS BOOKS TOYS PLANTS CANDLES BIKES TICKETS MUSIC DREAMS RIVER '
  'ISLAND SUMMIT STATION PARADE CIRCUS THEATER ARCADE LAB SCHOOL CLUB '
  'TEAM CREW SQUAD LEAGUE HOUSE CORNER WORKSHOP FACTORY GALLERY PANTRY'
).split()

VERBS = (
  'VISIT JOIN TRY TASTE EXPLORE CELEBRATE DISCOVER BUILD RIDE SHOP '
  'WELCOME SUPPORT READ PLAY RELAX DREAM CREATE SAVE GROW SHARE'
).split()

# Short fixed phrases of signs (1-3 words), our own.
PHRASES = (
  'OPEN',
  'CLOSED',
  'SALE',
  'WELCOME',
  'EXIT',
  'PUSH',
  'PULL',
  'SOLD OUT',
  'OPEN LATE',
  'NO PARKING',
  'STAFF ONLY',
  'THANK YOU',
  'HALF PRICE',
  'BACK SOON',
  'KEEP OUT',
  'ALL DAY',
  'TAKE AWAY',
  'GOOD LUCK',
  'BEST SELLER',
  'LAST CALL',
  'HOT DRINKS',
  'FREE WIFI',
  'MIND THE GAP',
  'SLOW DOWN',
  'LIVE TONIGHT',
  'HAND MADE',
  'STAY CURIOUS',
  'SEE YOU SOON',
)

# Words that follow a number or precede one ('ROOM 12', 'SINCE 1987').
NUMBER_LEADS = ('ROOM', 'GATE', 'PLATFORM', 'TABLE', 'LANE', 'STAND', 'ROUTE')
NUMBER_TAILS = ('DAYS', 'HOURS', 'MILES', 'STEPS', 'FLAVORS', 'SEATS')
