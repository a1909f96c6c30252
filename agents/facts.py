"""Facts written for the shipped search folder (``agents/docs/``) and the action generator's training
data, so that every ``[search]`` step of a built trajectory is answered by a shipped document.

Written by hand for octogate from general knowledge (areas are the U.S. Census Bureau's total areas;
heights and lengths the commonly cited figures); no source was copied.
"""

# name: (capital, total area in square miles, year of statehood)
US_STATES = {
    "Alabama": ("Montgomery", 52420, 1819), "Alaska": ("Juneau", 665384, 1959),
    "Arizona": ("Phoenix", 113990, 1912), "Arkansas": ("Little Rock", 53179, 1836),
    "California": ("Sacramento", 163695, 1850), "Colorado": ("Denver", 104094, 1876),
    "Connecticut": ("Hartford", 5543, 1788), "Delaware": ("Dover", 2489, 1787),
    "Florida": ("Tallahassee", 65758, 1845), "Georgia": ("Atlanta", 59425, 1788),
    "Hawaii": ("Honolulu", 10932, 1959), "Idaho": ("Boise", 83569, 1890),
    "Illinois": ("Springfield", 57914, 1818), "Indiana": ("Indianapolis", 36420, 1816),
    "Iowa": ("Des Moines", 56273, 1846), "Kansas": ("Topeka", 82278, 1861),
    "Kentucky": ("Frankfort", 40408, 1792), "Louisiana": ("Baton Rouge", 52378, 1812),
    "Maine": ("Augusta", 35380, 1820), "Maryland": ("Annapolis", 12406, 1788),
    "Massachusetts": ("Boston", 10554, 1788), "Michigan": ("Lansing", 96714, 1837),
    "Minnesota": ("Saint Paul", 86936, 1858), "Mississippi": ("Jackson", 48432, 1817),
    "Missouri": ("Jefferson City", 69707, 1821), "Montana": ("Helena", 147040, 1889),
    "Nebraska": ("Lincoln", 77348, 1867), "Nevada": ("Carson City", 110572, 1864),
    "New Hampshire": ("Concord", 9349, 1788), "New Jersey": ("Trenton", 8723, 1787),
    "New Mexico": ("Santa Fe", 121590, 1912), "New York": ("Albany", 54555, 1788),
    "North Carolina": ("Raleigh", 53819, 1789), "North Dakota": ("Bismarck", 70698, 1889),
    "Ohio": ("Columbus", 44826, 1803), "Oklahoma": ("Oklahoma City", 69899, 1907),
    "Oregon": ("Salem", 98379, 1859), "Pennsylvania": ("Harrisburg", 46054, 1787),
    "Rhode Island": ("Providence", 1545, 1790), "South Carolina": ("Columbia", 32020, 1788),
    "South Dakota": ("Pierre", 77116, 1889), "Tennessee": ("Nashville", 42144, 1796),
    "Texas": ("Austin", 268596, 1845), "Utah": ("Salt Lake City", 84897, 1896),
    "Vermont": ("Montpelier", 9616, 1791), "Virginia": ("Richmond", 42775, 1788),
    "Washington": ("Olympia", 71298, 1889), "West Virginia": ("Charleston", 24230, 1863),
    "Wisconsin": ("Madison", 65496, 1848), "Wyoming": ("Cheyenne", 97813, 1890),
}

# name: (capital, continent, currency)
COUNTRIES = {
    "France": ("Paris", "Europe", "euro"), "Germany": ("Berlin", "Europe", "euro"),
    "Italy": ("Rome", "Europe", "euro"), "Spain": ("Madrid", "Europe", "euro"),
    "Portugal": ("Lisbon", "Europe", "euro"), "Netherlands": ("Amsterdam", "Europe", "euro"),
    "Belgium": ("Brussels", "Europe", "euro"), "Austria": ("Vienna", "Europe", "euro"),
    "Greece": ("Athens", "Europe", "euro"), "Ireland": ("Dublin", "Europe", "euro"),
    "Finland": ("Helsinki", "Europe", "euro"), "Sweden": ("Stockholm", "Europe", "Swedish krona"),
    "Norway": ("Oslo", "Europe", "Norwegian krone"), "Denmark": ("Copenhagen", "Europe", "Danish krone"),
    "Poland": ("Warsaw", "Europe", "zloty"), "Switzerland": ("Bern", "Europe", "Swiss franc"),
    "United Kingdom": ("London", "Europe", "pound sterling"), "Hungary": ("Budapest", "Europe", "forint"),
    "Czech Republic": ("Prague", "Europe", "Czech koruna"), "Russia": ("Moscow", "Europe and Asia", "ruble"),
    "Turkey": ("Ankara", "Europe and Asia", "Turkish lira"), "Egypt": ("Cairo", "Africa", "Egyptian pound"),
    "Kenya": ("Nairobi", "Africa", "Kenyan shilling"), "Nigeria": ("Abuja", "Africa", "naira"),
    "Ethiopia": ("Addis Ababa", "Africa", "birr"), "Ghana": ("Accra", "Africa", "cedi"),
    "Morocco": ("Rabat", "Africa", "Moroccan dirham"), "South Africa": ("Pretoria", "Africa", "rand"),
    "Japan": ("Tokyo", "Asia", "yen"), "China": ("Beijing", "Asia", "renminbi"),
    "India": ("New Delhi", "Asia", "Indian rupee"), "South Korea": ("Seoul", "Asia", "South Korean won"),
    "Thailand": ("Bangkok", "Asia", "baht"), "Vietnam": ("Hanoi", "Asia", "dong"),
    "Indonesia": ("Jakarta", "Asia", "rupiah"), "Philippines": ("Manila", "Asia", "Philippine peso"),
    "Pakistan": ("Islamabad", "Asia", "Pakistani rupee"), "Iran": ("Tehran", "Asia", "Iranian rial"),
    "Saudi Arabia": ("Riyadh", "Asia", "Saudi riyal"), "Israel": ("Jerusalem", "Asia", "shekel"),
    "Australia": ("Canberra", "Oceania", "Australian dollar"), "New Zealand": ("Wellington", "Oceania", "New Zealand dollar"),
    "Canada": ("Ottawa", "North America", "Canadian dollar"), "Mexico": ("Mexico City", "North America", "Mexican peso"),
    "Cuba": ("Havana", "North America", "Cuban peso"), "Brazil": ("Brasilia", "South America", "real"),
    "Argentina": ("Buenos Aires", "South America", "Argentine peso"), "Chile": ("Santiago", "South America", "Chilean peso"),
    "Peru": ("Lima", "South America", "sol"), "Colombia": ("Bogota", "South America", "Colombian peso"),
}

# name: (birth year, death year or None, nationality, known for)
PEOPLE = {
    "Isaac Newton": (1643, 1727, "English", "the laws of motion and universal gravitation"),
    "Albert Einstein": (1879, 1955, "German-born", "the theory of relativity"),
    "Marie Curie": (1867, 1934, "Polish-French", "research on radioactivity"),
    "Charles Darwin": (1809, 1882, "English", "the theory of evolution by natural selection"),
    "Galileo Galilei": (1564, 1642, "Italian", "telescopic astronomy"),
    "Ada Lovelace": (1815, 1852, "English", "the first published computer program"),
    "Nikola Tesla": (1856, 1943, "Serbian-American", "alternating current systems"),
    "Leonardo da Vinci": (1452, 1519, "Italian", "the Mona Lisa"),
    "William Shakespeare": (1564, 1616, "English", "the plays Hamlet and Macbeth"),
    "Wolfgang Amadeus Mozart": (1756, 1791, "Austrian", "the opera The Magic Flute"),
    "Ludwig van Beethoven": (1770, 1827, "German", "nine symphonies"),
    "Jane Austen": (1775, 1817, "English", "the novel Pride and Prejudice"),
    "Charles Dickens": (1812, 1870, "English", "the novel Oliver Twist"),
    "Abraham Lincoln": (1809, 1865, "American", "being the 16th president of the United States"),
    "George Washington": (1732, 1799, "American", "being the first president of the United States"),
    "Napoleon Bonaparte": (1769, 1821, "French", "being emperor of the French"),
    "Alan Turing": (1912, 1954, "English", "the Turing machine"),
    "Johann Sebastian Bach": (1685, 1750, "German", "the Brandenburg Concertos"),
    "Vincent van Gogh": (1853, 1890, "Dutch", "the painting The Starry Night"),
    "Pablo Picasso": (1881, 1973, "Spanish", "the painting Guernica"),
    "Mark Twain": (1835, 1910, "American", "the novel Adventures of Huckleberry Finn"),
    "Leo Tolstoy": (1828, 1910, "Russian", "the novel War and Peace"),
    "Louis Pasteur": (1822, 1895, "French", "pasteurization and vaccines"),
    "Gregor Mendel": (1822, 1884, "Austrian", "the laws of inheritance"),
    "Michael Faraday": (1791, 1867, "English", "electromagnetic induction"),
    "James Clerk Maxwell": (1831, 1879, "Scottish", "the equations of electromagnetism"),
    "Niels Bohr": (1885, 1962, "Danish", "the Bohr model of the atom"),
    "Rosalind Franklin": (1920, 1958, "English", "X-ray images of DNA"),
    "Dmitri Mendeleev": (1834, 1907, "Russian", "the periodic table"),
    "Nicolaus Copernicus": (1473, 1543, "Polish", "the heliocentric model"),
    "Johannes Kepler": (1571, 1630, "German", "the laws of planetary motion"),
    "Florence Nightingale": (1820, 1910, "English", "founding modern nursing"),
    "Thomas Edison": (1847, 1931, "American", "the phonograph and the light bulb"),
    "Alexander Graham Bell": (1847, 1922, "Scottish-born", "the telephone"),
    "Christopher Columbus": (1451, 1506, "Italian", "voyages across the Atlantic in 1492"),
    "Queen Victoria": (1819, 1901, "British", "reigning over the United Kingdom from 1837 to 1901"),
    "Winston Churchill": (1874, 1965, "British", "being prime minister during the Second World War"),
    "Mahatma Gandhi": (1869, 1948, "Indian", "non-violent resistance for Indian independence"),
    "Nelson Mandela": (1918, 2013, "South African", "being the first black president of South Africa"),
    "Frida Kahlo": (1907, 1954, "Mexican", "self-portraits"),
}

# name: (city, height in metres, year completed)
LANDMARKS = {
    "Eiffel Tower": ("Paris", 330, 1889), "Statue of Liberty": ("New York City", 93, 1886),
    "Burj Khalifa": ("Dubai", 828, 2010), "Empire State Building": ("New York City", 443, 1931),
    "Space Needle": ("Seattle", 184, 1962), "CN Tower": ("Toronto", 553, 1976),
    "Tokyo Skytree": ("Tokyo", 634, 2012), "Leaning Tower of Pisa": ("Pisa", 56, 1372),
    "Big Ben": ("London", 96, 1859), "Taj Mahal": ("Agra", 73, 1653),
    "Washington Monument": ("Washington, D.C.", 169, 1884), "Gateway Arch": ("St. Louis", 192, 1965),
    "Petronas Towers": ("Kuala Lumpur", 452, 1998), "Sydney Opera House": ("Sydney", 65, 1973),
}

# name: (length in kilometres, where it flows into)
RIVERS = {
    "Nile": (6650, "the Mediterranean Sea"), "Amazon": (6400, "the Atlantic Ocean"),
    "Yangtze": (6300, "the East China Sea"), "Mississippi": (3730, "the Gulf of Mexico"),
    "Danube": (2850, "the Black Sea"), "Rhine": (1230, "the North Sea"), "Thames": (346, "the North Sea"),
    "Volga": (3530, "the Caspian Sea"), "Ganges": (2525, "the Bay of Bengal"), "Seine": (777, "the English Channel"),
}

# name: (height in metres, range or country)
MOUNTAINS = {
    "Mount Everest": (8849, "the Himalayas, on the border of Nepal and China"), "K2": (8611, "the Karakoram"),
    "Kilimanjaro": (5895, "Tanzania"), "Mont Blanc": (4806, "the Alps, on the border of France and Italy"),
    "Denali": (6190, "Alaska"), "Aconcagua": (6961, "the Andes in Argentina"), "Mount Fuji": (3776, "Japan"),
    "Matterhorn": (4478, "the Alps, on the border of Switzerland and Italy"), "Mount Elbrus": (5642, "the Caucasus in Russia"),
    "Mount Kosciuszko": (2228, "Australia"),
}

# name: (order from the Sun, mean diameter in km, orbital period in Earth days)
PLANETS = {
    "Mercury": (1, 4879, 88), "Venus": (2, 12104, 225), "Earth": (3, 12742, 365), "Mars": (4, 6779, 687),
    "Jupiter": (5, 139820, 4333), "Saturn": (6, 116460, 10759), "Uranus": (7, 50724, 30687),
    "Neptune": (8, 49244, 60190),
}

# name: (symbol, atomic number)
ELEMENTS = {
    "Hydrogen": ("H", 1), "Helium": ("He", 2), "Lithium": ("Li", 3), "Beryllium": ("Be", 4), "Boron": ("B", 5),
    "Carbon": ("C", 6), "Nitrogen": ("N", 7), "Oxygen": ("O", 8), "Fluorine": ("F", 9), "Neon": ("Ne", 10),
    "Sodium": ("Na", 11), "Magnesium": ("Mg", 12), "Aluminium": ("Al", 13), "Silicon": ("Si", 14),
    "Phosphorus": ("P", 15), "Sulfur": ("S", 16), "Chlorine": ("Cl", 17), "Argon": ("Ar", 18),
    "Potassium": ("K", 19), "Calcium": ("Ca", 20), "Iron": ("Fe", 26), "Copper": ("Cu", 29), "Zinc": ("Zn", 30),
    "Silver": ("Ag", 47), "Tin": ("Sn", 50), "Iodine": ("I", 53), "Platinum": ("Pt", 78), "Gold": ("Au", 79),
    "Mercury (element)": ("Hg", 80), "Lead": ("Pb", 82), "Uranium": ("U", 92),
}


def documents() -> list[dict[str, str]]:
    """One short document per fact row: ``{"title", "text"}``."""
    docs = []
    for state, (capital, area, year) in US_STATES.items():
        docs.append({"title": state, "text": f"{state} is a state of the United States. Its capital is {capital}. "
                     f"{state} has a total area of {area:,} square miles. It was admitted as a state in {year}."})
    for country, (capital, continent, currency) in COUNTRIES.items():
        docs.append({"title": country, "text": f"{country} is a country in {continent}. Its capital is {capital}, "
                     f"and its currency is the {currency}."})
    for person, (born, died, nationality, known) in PEOPLE.items():
        docs.append({"title": person, "text": f"{person} ({born}-{died}) was a {nationality} figure known for {known}. "
                     f"{person} was born in {born} and died in {died}."})
    for name, (city, height, year) in LANDMARKS.items():
        docs.append({"title": name, "text": f"The {name} is a landmark in {city}. It is {height} metres tall "
                     f"and was completed in {year}."})
    for name, (length, mouth) in RIVERS.items():
        docs.append({"title": f"{name} River", "text": f"The {name} is a river about {length:,} kilometres long. "
                     f"It flows into {mouth}."})
    for name, (height, where) in MOUNTAINS.items():
        docs.append({"title": name, "text": f"{name} is a mountain in {where}. Its summit is {height:,} metres "
                     "above sea level."})
    for name, (order, diameter, period) in PLANETS.items():
        docs.append({"title": f"{name} (planet)", "text": f"{name} is planet number {order} from the Sun. Its mean "
                     f"diameter is {diameter:,} kilometres and it orbits the Sun once every {period:,} Earth days."})
    for name, (symbol, number) in ELEMENTS.items():
        plain = name.replace(" (element)", "")
        docs.append({"title": name, "text": f"{plain} is a chemical element with the symbol {symbol} and atomic "
                     f"number {number}."})
    return docs
