/* ifeval_punkt.c - the sentences of the IFEval checkers (length_constraints:number_sentences, and
 * the split before nltk.word_tokenize's word tokenizer): NLTK's Punkt sentence splitter with its
 * English parameters, tables included. */
#define _GNU_SOURCE /* strdup, strndup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "models/ifeval_internal.h"

/* ---- Punkt sentence splitting (nltk.tokenize.punkt, PunktTokenizer("english")) ----
 * The parameters of NLTK's punkt_tab "english" model, written by scripts/make_ifeval_fixtures.py
 * --punkt-tables: abbreviations, collocations, frequent sentence starters, and the orthographic
 * context of ~1600 frequent English words (the reference's WORD_LIST, function words and the
 * sentence starters) as three lists: words seen in lower case and never capitalised inside a
 * sentence (starts), seen in lower case and capitalised inside a sentence (lower), and the words
 * seen lower-case at a sentence start and never capitalised (beg_lc). Any other word reads as
 * never seen, which is where the count can differ from NLTK's (see ifeval.h). */
static const char *const punkt_abbrev[] = {
    ". . ", "a.a", "a.c", "a.d", "a.g", "a.h", "a.m", "a.m.e", "a.s", "a.t", "adm", "ala", "ariz", "aug", "ave",
    "b.f", "b.v", "bros", "c", "c.i.t", "c.o.m.b", "c.v", "calif", "chg", "cie", "co", "col", "colo", "conn",
    "corp", "cos", "ct", "d", "d.c", "d.h", "d.w", "dec", "dr", "e", "e.f", "e.h", "e.l", "e.m", "f", "f.g", "f.j",
    "feb", "fla", "fri", "ft", "g", "g.d", "g.f", "g.k", "ga", "gen", "h", "h.c", "h.f", "h.m", "i.m.s", "ill",
    "inc", "j.b", "j.c", "j.j", "j.k", "j.p", "j.r", "jan", "jr", "k", "kan", "ky", "l", "l.a", "l.f", "l.p", "lt",
    "ltd", "m", "m.b.a", "m.d.c", "m.j", "maj", "messrs", "mg", "mich", "minn", "mr", "mrs", "ms", "n", "n.c",
    "n.d", "n.h", "n.j", "n.m", "n.v", "n.y", "nev", "nov", "oct", "ok", "okla", "ore", "p", "p.a.m", "p.m", "pa",
    "ph.d", "prof", "r", "r.a", "r.h", "r.i", "r.j", "r.k", "r.t", "rep", "reps", "s", "s.a", "s.a.y", "s.c", "s.g",
    "s.p.a", "s.s", "sen", "sep", "sept", "sr", "st", "sw", "t", "t.j", "tenn", "tues", "u.k", "u.n", "u.s",
    "u.s.a", "u.s.s.r", "v", "va", "vs", "vt", "w", "w.c", "w.r", "w.va", "w.w", "wash", "wed", "wis", "yr",
};
static const char *const punkt_starters[] = {
    "according", "although", "among", "both", "but", "despite", "even", "he", "however", "i", "if", "in", "indeed",
    "instead", "it", "many", "meanwhile", "moreover", "most", "nevertheless", "nonetheless", "nor", "sales",
    "separately", "similarly", "since", "so", "some", "the", "there", "these", "they", "this", "though", "thus",
    "under", "when", "while", "yet",
};
static const char *const punkt_collocations[] = {
    "##number## abreast", "##number## aes", "##number## business", "##number## cbot", "##number## colgate",
    "##number## commodities", "##number## cooper", "##number## corrections", "##number## credit",
    "##number## dividend", "##number## financing", "##number## genentech", "##number## henley",
    "##number## insider", "##number## international", "##number## leisure", "##number## letters",
    "##number## notable", "##number## pay-fone", "##number## pegasus", "##number## pepper", "##number## review",
    "##number## rj", "##number## wedgestone", "##number## who", "##number## zimmer", "b edelman", "b levine",
    "b smith", "b stewart", "b wigton", "i magnin", "i toussie", "j aron", "j fialka", "j walter", "o ludcke",
};
static const char *const punkt_ortho_starts[] = {
    "above", "abuse", "accident", "active", "ad", "addition", "address", "adult", "advantage", "advice",
    "afternoon", "agent", "airline", "almost", "alternative", "always", "ambition", "amount", "analysis", "angle",
    "animal", "annual", "anybody", "anyone", "anything", "anywhere", "apartment", "appearance", "application",
    "appointment", "argument", "arm", "arrival", "article", "ask", "aspect", "assignment", "assist", "associate",
    "assumption", "atmosphere", "attack", "attention", "attitude", "audience", "author", "awareness", "bag", "band",
    "baseball", "basis", "basket", "bat", "beat", "bed", "bedroom", "being", "bench", "benefit", "bet", "between",
    "beyond", "bicycle", "birth", "bit", "bite", "bitter", "blame", "blind", "blood", "body", "bone", "bonus",
    "boot", "bother", "bottle", "box", "boy", "brain", "branch", "bread", "break", "breast", "breath", "brick",
    "brilliant", "brother", "buddy", "bunch", "burn", "bus", "buyer", "cabinet", "call", "calm", "camera", "cancel",
    "candidate", "car", "carpet", "carry", "cause", "cell", "chair", "challenge", "chance", "character", "charge",
    "chart", "check", "chest", "choice", "claim", "clerk", "client", "climate", "clock", "closet", "clothes",
    "cloud", "coat", "cold", "combination", "combine", "comfort", "comfortable", "comment", "comparison",
    "concentrate", "conclusion", "condition", "conflict", "connection", "consequence", "consideration", "consist",
    "constant", "contact", "contest", "context", "contribution", "conversation", "convert", "copy", "corner",
    "cost", "counter", "couple", "courage", "course", "crack", "craft", "crash", "cream", "crew", "criticism",
    "customer", "cycle", "dark", "database", "date", "daughter", "debate", "deep", "definition", "degree",
    "delivery", "dependent", "depth", "description", "designer", "desire", "desk", "detail", "diet", "difference",
    "difficulty", "dig", "direction", "dirt", "disaster", "discipline", "discussion", "dish", "disk", "display",
    "distance", "doctor", "document", "does", "doing", "door", "dot", "double", "doubt", "draft", "drag", "drama",
    "draw", "drawing", "dress", "drink", "drunk", "dump", "ear", "edge", "effective", "efficiency", "egg", "either",
    "elevator", "emergency", "emphasis", "employ", "employee", "employer", "engineer", "enough", "entrance",
    "entry", "environment", "equal", "equivalent", "escape", "essay", "establishment", "event", "ever", "evidence",
    "exam", "examination", "example", "excitement", "excuse", "exercise", "experience", "expert", "explanation",
    "expression", "extent", "external", "extreme", "eye", "fact", "factor", "familiar", "fan", "fat", "fault",
    "fear", "feature", "feedback", "feeling", "female", "figure", "file", "fill", "final", "finish", "fish",
    "fishing", "fix", "flight", "floor", "flower", "fly", "fold", "following", "foot", "forever", "formal",
    "friend", "friendship", "funny", "garbage", "gather", "gift", "girl", "girlfriend", "golf", "grab",
    "grandfather", "grocery", "ground", "guarantee", "guess", "guest", "guidance", "guitar", "guy", "habit", "hair",
    "handle", "hang", "harm", "hate", "hearing", "heavy", "height", "her", "here", "hers", "herself", "hide",
    "highlight", "him", "himself", "hire", "historian", "hold", "homework", "horror", "horse", "host", "hour",
    "hurry", "husband", "idea", "ideal", "illegal", "image", "imagination", "implement", "importance", "impression",
    "improvement", "incident", "indeed", "independence", "independent", "indication", "individual", "inevitable",
    "influence", "initial", "injury", "inside", "inspection", "inspector", "instance", "instead", "intention",
    "into", "invite", "item", "jacket", "joke", "junior", "kick", "kid", "kill", "kiss", "kitchen", "knife",
    "knowledge", "lab", "lack", "ladder", "language", "laugh", "leadership", "leading", "least", "length", "lesson",
    "lie", "lift", "lip", "list", "listen", "literature", "living", "location", "lock", "lunch", "maintenance",
    "male", "mall", "manager", "manner", "manufacturer", "marriage", "match", "math", "maximum", "meal", "meaning",
    "measurement", "medium", "member", "membership", "mention", "menu", "mess", "message", "method", "midnight",
    "milk", "mind", "mine", "minimum", "minute", "mistake", "mix", "mixture", "mobile", "mom", "moment", "mood",
    "moreover", "morning", "mother", "mouse", "mouth", "muscle", "myself", "nasty", "native", "nature", "necessary",
    "neck", "negative", "negotiation", "neither", "nevertheless", "newspaper", "noise", "nonetheless", "nor",
    "nose", "note", "nothing", "novel", "number", "object", "objective", "obligation", "occasion", "officer",
    "opening", "opportunity", "opposite", "ordinary", "original", "otherwise", "ours", "ourselves", "outcome",
    "owner", "pack", "page", "pain", "paint", "pair", "parking", "particular", "partner", "pass", "passage",
    "passenger", "passion", "path", "patient", "pause", "peak", "pen", "percentage", "perception", "performance",
    "permission", "permit", "person", "personal", "personality", "phase", "philosophy", "phone", "phrase",
    "physical", "piano", "pick", "piece", "pipe", "pitch", "plane", "plastic", "plate", "platform", "play",
    "player", "please", "pleasure", "plenty", "poet", "politics", "pool", "pop", "position", "positive",
    "possession", "possibility", "potato", "potential", "pound", "practice", "preference", "preparation",
    "presence", "present", "presentation", "pride", "priest", "principle", "prior", "priority", "private",
    "problem", "process", "product", "profession", "professor", "profile", "program", "promise", "promotion",
    "prompt", "proof", "psychology", "pull", "put", "quantity", "question", "rain", "range", "ratio", "raw",
    "reaction", "reality", "reception", "recipe", "recognition", "recommendation", "recover", "reflection",
    "refuse", "region", "regret", "regular", "relation", "relationship", "relative", "relief", "remote", "remove",
    "rent", "replacement", "reply", "reputation", "resist", "resolution", "resort", "respect", "respond",
    "response", "restaurant", "result", "reveal", "reward", "roll", "roof", "rough", "round", "routine", "ruin",
    "rush", "sad", "safe", "salad", "sample", "sand", "sandwich", "satisfaction", "scale", "scene", "schedule",
    "score", "script", "season", "section", "selection", "sense", "sensitive", "sentence", "separately", "serve",
    "session", "setting", "sex", "shake", "shape", "shelter", "shift", "shine", "shirt", "shock", "shoot", "shot",
    "shoulder", "significance", "similarly", "simple", "sing", "single", "sink", "sister", "size", "skill", "skin",
    "skirt", "smell", "smile", "smoke", "snow", "so", "soil", "solid", "solution", "sometimes", "son", "soon",
    "sort", "source", "spare", "specialist", "specific", "speech", "speed", "spell", "spend", "spirit", "spiritual",
    "spite", "sport", "spread", "stable", "stage", "stand", "statement", "status", "steal", "step", "stick",
    "still", "storage", "strength", "stress", "stretch", "string", "strip", "structure", "studio", "style",
    "success", "such", "suggestion", "surgery", "surprise", "surround", "suspect", "swim", "swimming", "swing",
    "sympathy", "tackle", "tale", "tank", "tap", "task", "taste", "tea", "teach", "teacher", "teaching", "team",
    "tear", "temperature", "temporary", "tension", "term", "text", "thanks", "them", "themselves", "theory",
    "therefore", "though", "thought", "through", "thus", "ticket", "tie", "tip", "title", "together", "tomorrow",
    "tone", "tourist", "tradition", "train", "transition", "treat", "trick", "truth", "try", "tune", "turn",
    "twist", "type", "unique", "unless", "upon", "us", "user", "vacation", "valuable", "variation", "variety",
    "vast", "vegetable", "vehicle", "version", "very", "village", "virus", "visual", "wait", "walk", "warning",
    "wave", "weakness", "wealth", "wear", "weather", "web", "wedding", "weekend", "weight", "welcome", "were",
    "whenever", "whereas", "whether", "which", "whole", "whom", "wife", "win", "window", "winner", "wish", "within",
    "without", "witness", "working", "writer", "writing", "yes", "yesterday", "yet", "your", "yourself", "youth",
    "zone",
};
static const char *const punkt_ortho_lower[] = {
    "a", "ability", "about", "abroad", "access", "according", "account", "act", "action", "activity", "actor",
    "administration", "advance", "advertising", "affair", "affect", "after", "again", "against", "age", "agency",
    "agreement", "air", "airport", "alarm", "alcohol", "all", "also", "although", "am", "among", "an", "analyst",
    "and", "anger", "another", "answer", "any", "appeal", "are", "area", "army", "around", "art", "as", "aside",
    "assistance", "assistant", "association", "at", "attempt", "average", "award", "baby", "back", "background",
    "bad", "balance", "ball", "bank", "bar", "base", "battle", "be", "beach", "bear", "beautiful", "because",
    "been", "beer", "before", "beginning", "bell", "below", "belt", "bend", "bid", "big", "bill", "birthday",
    "black", "block", "blow", "blue", "board", "boat", "book", "border", "boss", "both", "bottom", "breakfast",
    "brief", "broad", "brown", "budget", "building", "business", "but", "buy", "by", "cable", "calendar", "camp",
    "campaign", "can", "cancer", "candy", "cap", "capital", "card", "care", "career", "case", "cash", "cat",
    "catch", "category", "chain", "champion", "change", "channel", "chapter", "chemical", "chicken", "child",
    "chip", "chocolate", "church", "cigarette", "city", "class", "classic", "club", "coach", "coast", "code",
    "coffee", "collection", "college", "command", "commercial", "commission", "committee", "common", "community",
    "company", "competition", "complaint", "complex", "computer", "concept", "concern", "concert", "conference",
    "confidence", "confusion", "construction", "contract", "control", "could", "count", "country", "county",
    "court", "cover", "crazy", "creative", "credit", "cross", "cry", "culture", "cup", "currency", "current", "cut",
    "dad", "damage", "dance", "data", "day", "dead", "deal", "dealer", "death", "debt", "decision", "delay",
    "demand", "department", "departure", "deposit", "design", "despite", "development", "device", "did", "dinner",
    "director", "discount", "disease", "distribution", "district", "do", "dog", "down", "dream", "drive", "drop",
    "due", "during", "dust", "duty", "each", "earth", "ease", "east", "eat", "economics", "economy", "editor",
    "education", "effect", "effort", "election", "employment", "end", "energy", "engine", "engineering",
    "entertainment", "enthusiasm", "equipment", "error", "estate", "estimate", "even", "evening", "every",
    "exchange", "exit", "extension", "face", "fail", "failure", "fall", "family", "farm", "farmer", "father", "fee",
    "feed", "feel", "few", "field", "fight", "film", "finance", "finding", "fire", "first", "flow", "focus", "food",
    "football", "for", "force", "form", "fortune", "foundation", "freedom", "from", "front", "fruit", "fuel", "fun",
    "function", "funeral", "further", "future", "gain", "game", "gap", "garden", "gas", "gate", "gear", "general",
    "give", "glass", "go", "goal", "god", "gold", "good", "government", "grand", "great", "green", "group",
    "growth", "guard", "guide", "had", "half", "hall", "hand", "has", "have", "having", "he", "head", "health",
    "heart", "heat", "hell", "help", "high", "highway", "his", "history", "hit", "holiday", "home", "hope",
    "hospital", "hotel", "house", "housing", "how", "however", "human", "hunt", "hurt", "ice", "if", "impact", "in",
    "income", "increase", "industry", "inflation", "information", "initiative", "insurance", "interest", "internal",
    "international", "interview", "introduction", "investment", "iron", "is", "island", "issue", "it", "its",
    "itself", "job", "join", "joint", "judge", "judgment", "jump", "jury", "just", "keep", "key", "kind", "king",
    "lady", "lake", "land", "landscape", "last", "later", "law", "lawyer", "lay", "lead", "leader", "league",
    "leave", "leg", "less", "let", "letter", "level", "life", "light", "like", "limit", "line", "link", "load",
    "loan", "local", "long", "look", "loss", "love", "low", "luck", "machine", "magazine", "mail", "main", "major",
    "make", "man", "management", "many", "march", "mark", "market", "marketing", "master", "mate", "material",
    "matter", "may", "maybe", "me", "meanwhile", "meat", "media", "medicine", "meet", "meeting", "memory", "metal",
    "middle", "might", "minor", "mirror", "miss", "mission", "model", "money", "monitor", "month", "more",
    "mortgage", "most", "motor", "mountain", "move", "movie", "much", "music", "must", "my", "nail", "name",
    "nation", "national", "natural", "net", "network", "never", "news", "next", "night", "no", "nobody", "normal",
    "north", "not", "notice", "now", "nurse", "of", "off", "offer", "office", "official", "often", "oil", "on",
    "once", "one", "only", "operation", "opinion", "option", "or", "order", "organization", "other", "others",
    "our", "out", "outside", "over", "own", "pace", "package", "paper", "parent", "park", "part", "party", "past",
    "pattern", "pay", "payment", "peace", "penalty", "pension", "people", "perhaps", "period", "perspective",
    "photo", "physics", "picture", "pizza", "place", "plan", "plant", "point", "police", "policy", "pollution",
    "population", "possible", "post", "power", "president", "press", "pressure", "price", "primary", "print",
    "prize", "procedure", "produce", "professional", "profit", "progress", "project", "property", "proposal",
    "protection", "public", "purchase", "purpose", "push", "quality", "quarter", "queen", "quiet", "quit", "race",
    "radio", "raise", "rate", "rather", "reach", "read", "reading", "really", "reason", "record", "recording",
    "red", "reference", "register", "release", "repair", "report", "representative", "republic", "request",
    "requirement", "research", "reserve", "resolve", "resource", "responsibility", "rest", "return", "revenue",
    "review", "revolution", "rice", "rich", "ride", "ring", "rise", "risk", "road", "rock", "role", "room", "row",
    "rub", "rule", "run", "safety", "salary", "sale", "sales", "salt", "save", "savings", "scheme", "school",
    "science", "screen", "sea", "search", "seat", "second", "secret", "secretary", "sector", "security", "see",
    "sell", "senior", "series", "service", "set", "several", "share", "she", "ship", "shoe", "shop", "shopping",
    "should", "show", "side", "sign", "signal", "signature", "silver", "since", "singer", "sir", "site",
    "situation", "sleep", "slide", "slip", "society", "soft", "software", "some", "something", "somewhere", "song",
    "sound", "soup", "south", "space", "speaker", "special", "split", "spot", "spring", "square", "staff",
    "standard", "star", "start", "state", "station", "stay", "stock", "stop", "store", "storm", "story", "strain",
    "strategy", "street", "strike", "struggle", "student", "study", "stuff", "stupid", "subject", "substance",
    "sugar", "suit", "summer", "sun", "supermarket", "support", "survey", "sweet", "switch", "system", "table",
    "talk", "target", "tax", "technology", "telephone", "television", "tell", "tennis", "test", "than", "that",
    "the", "their", "theme", "then", "there", "these", "they", "thing", "third", "this", "those", "time", "to",
    "today", "too", "tool", "top", "topic", "total", "touch", "tough", "tour", "tower", "town", "track", "trade",
    "traffic", "training", "transportation", "trash", "travel", "tree", "trip", "trouble", "truck", "trust", "two",
    "uncle", "under", "understanding", "union", "unit", "university", "until", "up", "upper", "use", "usual",
    "value", "video", "view", "visit", "voice", "volume", "wake", "wall", "war", "was", "watch", "water", "way",
    "we", "week", "well", "west", "western", "what", "whatever", "wheel", "when", "where", "while", "white", "who",
    "whose", "why", "will", "wind", "wine", "wing", "winter", "with", "woman", "wonder", "wood", "word", "work",
    "worker", "world", "worry", "worth", "would", "year", "you", "young",
};
static const char *const punkt_ortho_beg_lc[] = {
    "administrators", "b-week", "r-revised", "z-holiday",
};

enum { ORTHO_BEG_UC = 1 << 1, ORTHO_MID_UC = 1 << 2, ORTHO_UNK_UC = 1 << 3, ORTHO_BEG_LC = 1 << 4,
       ORTHO_MID_LC = 1 << 5, ORTHO_UNK_LC = 1 << 6 };
#define ORTHO_UC (ORTHO_BEG_UC | ORTHO_MID_UC | ORTHO_UNK_UC)
#define ORTHO_LC (ORTHO_BEG_LC | ORTHO_MID_LC | ORTHO_UNK_LC)

/* The orthographic flags that the decisions below read, as far as the tables know them. */
static int ortho_context(const char *typ)
{
    int v = 0;
    if (ifeval_in_list(typ, punkt_ortho_starts, COUNT(punkt_ortho_starts))) v |= ORTHO_MID_LC;
    if (ifeval_in_list(typ, punkt_ortho_lower, COUNT(punkt_ortho_lower))) v |= ORTHO_MID_LC | ORTHO_MID_UC;
    if (ifeval_in_list(typ, punkt_ortho_beg_lc, COUNT(punkt_ortho_beg_lc))) v |= ORTHO_BEG_LC;
    return v;
}

typedef struct ptok {
    const char *tok;
    size_t n;
    char *type; /* lower case, "##number##" for numbers */
    bool period_final, sentbreak, abbr, ellipsis;
} ptok;

typedef struct punkt {
    pcre2_code *word;    /* PunktLanguageVars word tokenizer */
    pcre2_code *context; /* period context: group 1 after_tok, group 2 next_tok */
    pcre2_code *numeric;
    pcre2_code *realign;
} punkt;

/* Python-escaped sets of PunktLanguageVars, in PCRE2 syntax. */
#define P_NONWORD "(?:[)\";}\\]\\*:@'\\({\\[?!])"
#define P_MULTI "(?:\\-{2,}|\\.{2,}|(?:\\.\\s){2,}\\.)"
#define P_WORDSTART "[^\\(\"`{\\[:;&\\#\\*@\\)}\\]\\-,]"

static void punkt_free(punkt *p)
{
    pcre2_code_free(p->word);
    pcre2_code_free(p->context);
    pcre2_code_free(p->numeric);
    pcre2_code_free(p->realign);
}

static bool punkt_init(punkt *p)
{
    static const char *const patterns[] = {
        P_MULTI "|(?=" P_WORDSTART ")\\S+?(?=\\s|$|" P_NONWORD "|" P_MULTI "|,(?=$|\\s|" P_NONWORD "|" P_MULTI
                "))|\\S",
        "[\\.\\?!](?=(" P_NONWORD "|\\s+(\\S+)))",
        "^-?[\\.,]?\\d[\\d,\\.-]*\\.?$",
        "[\"')\\]}]+?(?:\\s+|(?=--)|$)",
    };
    static const uint32_t opts[] = {0, 0, 0, PCRE2_MULTILINE};
    pcre2_code *re[4];
    if (!ifeval_re_new_all(re, patterns, opts, 4)) return false;
    *p = (punkt){re[0], re[1], re[2], re[3]};
    return true;
}

static bool tok_is(const ptok *t, const char *s) { return t->n == strlen(s) && !memcmp(t->tok, s, t->n); }

static bool first_upper(const ptok *t)
{
    size_t k;
    return ifeval_py_upper_cp(ifeval_decode(t->tok, t->n, 0, &k));
}

static bool first_lower(const ptok *t)
{
    size_t k;
    return ifeval_py_lower_cp(ifeval_decode(t->tok, t->n, 0, &k));
}

/* [^\W\d]\.$ */
static bool is_initial(const ptok *t)
{
    size_t k;
    int32_t c = ifeval_decode(t->tok, t->n, 0, &k);
    return k + 1 == t->n && t->tok[k] == '.' && ifeval_py_word(c) && utf8proc_category(c) != UTF8PROC_CATEGORY_ND;
}

/* The type without a final period (when longer than one character); new string. */
static char *type_without_period(const char *type, bool strip)
{
    size_t n = strlen(type);
    if (strip && n > 1 && type[n - 1] == '.') n--;
    char *s = strndup(type, n);
    if (!s) lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    return s;
}

typedef enum { ORTHO_FALSE, ORTHO_TRUE, ORTHO_UNKNOWN } ortho_answer;

/* Punkt's orthographic heuristic: does the token start a sentence? */
static ortho_answer ortho_heuristic(const ptok *t, const char *typ)
{
    if (t->n == 1 && strchr(";:,.!?", t->tok[0])) return ORTHO_FALSE;
    int ctx = ortho_context(typ);
    if (first_upper(t) && (ctx & ORTHO_LC) && !(ctx & ORTHO_MID_UC)) return ORTHO_TRUE;
    if (first_lower(t) && ((ctx & ORTHO_UC) || !(ctx & ORTHO_BEG_LC))) return ORTHO_FALSE;
    return ORTHO_UNKNOWN;
}

static void first_pass(ptok *t)
{
    bool ellipsis = t->n >= 2;
    for (size_t i = 0; i < t->n; i++) ellipsis &= t->tok[i] == '.';
    if (tok_is(t, ".") || tok_is(t, "?") || tok_is(t, "!")) {
        t->sentbreak = true;
    } else if (ellipsis) {
        t->ellipsis = true;
    } else if (t->period_final && !(t->n >= 2 && t->tok[t->n - 2] == '.')) {
        /* tok[:-1].lower(), or its part after the last hyphen, is a known abbreviation. */
        size_t ln;
        char *low = ifeval_py_lower(t->tok, t->n - 1, &ln);
        const char *dash = low ? strrchr(low, '-') : NULL;
        if (low && (ifeval_in_list(low, punkt_abbrev, COUNT(punkt_abbrev)) ||
                    (dash && ifeval_in_list(dash + 1, punkt_abbrev, COUNT(punkt_abbrev)))))
            t->abbr = true;
        else
            t->sentbreak = true;
        free(low);
    }
}

/* Second pass on a pair of tokens, updating the first (PunktSentenceTokenizer._second_pass_annotation). */
static lu_status second_pass(ptok *t1, const ptok *t2)
{
    if (!t1->period_final) return LU_OK;
    char *typ = type_without_period(t1->type, true), *next = type_without_period(t2->type, t2->sentbreak);
    char *pair = typ && next ? malloc(strlen(typ) + strlen(next) + 2) : NULL;
    if (!pair) {
        free(typ);
        free(next);
        return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
    }
    sprintf(pair, "%s %s", typ, next);
    bool initial = is_initial(t1);
    if (ifeval_in_list(pair, punkt_collocations, COUNT(punkt_collocations))) {
        t1->sentbreak = false;
        t1->abbr = true;
        goto done;
    }
    if ((t1->abbr || t1->ellipsis) && !initial) {
        if (ortho_heuristic(t2, next) == ORTHO_TRUE ||
            (first_upper(t2) && ifeval_in_list(next, punkt_starters, COUNT(punkt_starters)))) {
            t1->sentbreak = true;
            goto done;
        }
    }
    if (initial || !strcmp(typ, "##number##")) {
        ortho_answer a = ortho_heuristic(t2, next);
        if (a == ORTHO_FALSE || (a == ORTHO_UNKNOWN && initial && first_upper(t2) && !(ortho_context(next) & ORTHO_LC))) {
            t1->sentbreak = false;
            t1->abbr = true;
        }
    }
done:
    free(typ);
    free(next);
    free(pair);
    return LU_OK;
}

/* Word tokens of s, line by line (PunktBaseClass._tokenize_words), typed. */
static lu_status punkt_tokens(const punkt *p, const char *s, size_t n, ptok **out, int64_t *count)
{
    int64_t cap = 0;
    *out = NULL;
    *count = 0;
    for (size_t a = 0; a <= n;) {
        const char *nl = memchr(s + a, '\n', n - a);
        size_t b = nl ? (size_t)(nl - s) : n;
        if (!ifeval_blank(s + a, b - a)) {
            size_t *sp = NULL;
            int64_t m = ifeval_re_find(p->word, s + a, b - a, &sp);
            if (m < 0) return lu_error_code();
            for (int64_t i = 0; i < m; i++) {
                if (*count == cap) {
                    cap = 2 * cap + 16;
                    ptok *grown = realloc(*out, (size_t)cap * sizeof *grown);
                    if (!grown) {
                        free(sp);
                        return lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
                    }
                    *out = grown;
                }
                ptok *t = &(*out)[(*count)++];
                *t = (ptok){.tok = s + a + sp[2 * i], .n = sp[2 * i + 1] - sp[2 * i]};
                t->period_final = t->n && t->tok[t->n - 1] == '.';
                size_t ln;
                char *low = ifeval_py_lower(t->tok, t->n, &ln);
                int num = low ? ifeval_re_search(p->numeric, low, ln) : -1;
                if (num == 1) {
                    free(low);
                    low = strdup("##number##");
                }
                if (num < 0 || !low) {
                    free(low);
                    free(sp);
                    (*count)--;
                    return num < 0 ? lu_error_code() : lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
                }
                t->type = low;
            }
            free(sp);
        }
        if (!nl) break;
        a = b + 1;
    }
    return LU_OK;
}

static void ptoks_free(ptok *t, int64_t n)
{
    for (int64_t i = 0; i < n; i++) free(t[i].type);
    free(t);
}

/* text_contains_sentbreak: a token before the last one ends a sentence. -1 on error. */
static int contains_sentbreak(const punkt *p, const char *s, size_t n)
{
    ptok *t;
    int64_t m;
    if (punkt_tokens(p, s, n, &t, &m) != LU_OK) {
        ptoks_free(t, m);
        return -1;
    }
    for (int64_t i = 0; i < m; i++) first_pass(&t[i]);
    int found = 0;
    for (int64_t i = 0; i + 1 < m && !found; i++) {
        if (second_pass(&t[i], &t[i + 1]) != LU_OK) {
            found = -1;
            break;
        }
        found = t[i].sentbreak;
    }
    ptoks_free(t, m);
    return found;
}

/* Sentence spans of text (start, end pairs), as PunktSentenceTokenizer.span_tokenize with
 * realign_boundaries; -1 on error. */
static int64_t punkt_spans(const punkt *p, const char *s, size_t n, size_t **spans)
{
    size_t *slices = NULL;
    *spans = NULL;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->context, NULL);
    int64_t n_slices = 0, n_out = -1;
    /* Every [.?!] with its lookahead is a candidate; at most one slice per candidate plus the last. */
    int64_t cand = 1;
    for (size_t i = 0; i < n; i++) cand += s[i] == '.' || s[i] == '?' || s[i] == '!';
    slices = malloc((size_t)cand * 2 * sizeof *slices);
    if (!md || !slices) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        goto out;
    }
    size_t prev_a = 0, prev_b = 0, last_break = 0;
    bool have_prev = false;
    size_t pm_end = 0, pm_after_end = 0, pm_next = 0;
    bool pm_has_next = false;
    for (size_t pos = 0;; ) {
        int rc = pos <= n ? pcre2_match(p->context, (PCRE2_SPTR)s, n, pos, 0, md, NULL) : PCRE2_ERROR_NOMATCH;
        bool end = rc == PCRE2_ERROR_NOMATCH;
        if (rc < 0 && !end) {
            lu_errorf(LU_ERR_INVALID, "ifeval: sentence regex failed (%d)", rc);
            goto out;
        }
        size_t m_start = 0, m_end = 0, a = 0;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (!end) {
            m_start = ov[0];
            m_end = ov[1];
            /* The word before the match: after the last ASCII whitespace since the previous one
             * (none, or one at offset 0, gives the previous word's start - as the reference). */
            size_t from = prev_b < m_start ? prev_b : m_start, idx = 0;
            for (size_t i = m_start; i-- > from;)
                if (strchr(" \t\n\r\v\f", s[i]) && s[i]) {
                    idx = i - from;
                    break;
                }
            a = idx ? from + idx + 1 : prev_a;
        }
        /* Yield the previous candidate unless this word overlaps it. */
        if (have_prev && (end || prev_b <= a)) {
            /* The context: the word, the candidate and what follows it (contiguous in s). */
            int br = contains_sentbreak(p, s + prev_a, pm_after_end - prev_a);
            if (br < 0) goto out;
            if (br) {
                slices[2 * n_slices] = last_break;
                slices[2 * n_slices + 1] = pm_end;
                n_slices++;
                last_break = pm_has_next ? pm_next : pm_end;
            }
        }
        if (end) break;
        have_prev = true;
        pm_end = m_end;
        pm_after_end = ov[3];
        pm_has_next = ov[4] != PCRE2_UNSET;
        pm_next = pm_has_next ? ov[4] : 0;
        prev_a = a;
        prev_b = m_start;
        pos = m_end > m_start ? m_end : m_start + 1;
    }
    size_t b, e;
    ifeval_py_strip(s, n, &b, &e);
    slices[2 * n_slices] = last_break;
    slices[2 * n_slices + 1] = b == e ? 0 : e;
    n_slices++;
    /* _realign_boundaries */
    *spans = malloc((size_t)n_slices * 2 * sizeof **spans);
    if (!*spans) {
        lu_errorf(LU_ERR_NOMEM, "ifeval: out of memory");
        goto out;
    }
    n_out = 0;
    size_t realign = 0;
    for (int64_t i = 0; i < n_slices; i++) {
        size_t s1a = slices[2 * i] + realign, s1b = slices[2 * i + 1];
        if (i + 1 == n_slices) {
            if (s1a < s1b) (*spans)[2 * n_out] = s1a, (*spans)[2 * n_out + 1] = s1b, n_out++;
            break;
        }
        size_t s2a = slices[2 * i + 2], s2b = slices[2 * i + 3];
        int rc = s2a < s2b ? pcre2_match(p->realign, (PCRE2_SPTR)s + s2a, s2b - s2a, 0, PCRE2_ANCHORED, md, NULL)
                           : PCRE2_ERROR_NOMATCH;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t mb, me;
            ifeval_py_strip(s + s2a, ov[1], &mb, &me);
            /* rstrip only: the match starts with a closing mark, never with whitespace. */
            (*spans)[2 * n_out] = s1a;
            (*spans)[2 * n_out + 1] = s2a + me;
            n_out++;
            realign = ov[1];
        } else {
            realign = 0;
            if (s1a < s1b) (*spans)[2 * n_out] = s1a, (*spans)[2 * n_out + 1] = s1b, n_out++;
        }
    }
out:
    pcre2_match_data_free(md);
    free(slices);
    if (n_out < 0) {
        free(*spans);
        *spans = NULL;
    }
    return n_out;
}

int64_t ifeval_sentence_spans(const char *s, size_t n, size_t **spans)
{
    punkt p;
    *spans = NULL;
    if (!punkt_init(&p)) return -1;
    int64_t m = punkt_spans(&p, s, n, spans);
    punkt_free(&p);
    return m;
}

int64_t ifeval_count_sentences(const char *s, size_t n)
{
    size_t *spans;
    int64_t m = ifeval_sentence_spans(s, n, &spans);
    free(spans);
    return m;
}

int64_t lu_ifeval_count_sentences(const char *text) { return ifeval_count_sentences(text, strlen(text)); }
