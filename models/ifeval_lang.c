/* ifeval_lang.c - language identification for the IFEval checkers (language:response_language,
 * change_case:english_capital, english_lowercase), in place of langdetect (ifeval.h says how the
 * two differ). The script with the most letters decides; scripts shared by several languages are
 * told apart by letters only one of them uses (Cyrillic, Arabic), by Vietnamese's tone letters, or
 * by counting frequent words (Latin, Devanagari), ties to the first language listed; a Latin text
 * without any of the listed words reads as English. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "models/ifeval_internal.h"

typedef enum {
    S_LATIN, S_CYRILLIC, S_GREEK, S_ARABIC, S_HEBREW, S_DEVANAGARI, S_BENGALI, S_GURMUKHI, S_GUJARATI, S_TAMIL,
    S_TELUGU, S_KANNADA, S_MALAYALAM, S_THAI, S_HANGUL, S_KANA, S_HAN, S_COUNT
} script;

static int script_of(int32_t c)
{
    static const struct { int32_t lo, hi; script s; } blocks[] = {
        {0x41, 0x24F, S_LATIN},       {0x1E00, 0x1EFF, S_LATIN},     {0x370, 0x3FF, S_GREEK},
        {0x1F00, 0x1FFF, S_GREEK},    {0x400, 0x52F, S_CYRILLIC},    {0x590, 0x5FF, S_HEBREW},
        {0x600, 0x6FF, S_ARABIC},     {0x750, 0x77F, S_ARABIC},      {0xFB50, 0xFDFF, S_ARABIC},
        {0xFE70, 0xFEFF, S_ARABIC},   {0x900, 0x97F, S_DEVANAGARI},  {0x980, 0x9FF, S_BENGALI},
        {0xA00, 0xA7F, S_GURMUKHI},   {0xA80, 0xAFF, S_GUJARATI},    {0xB80, 0xBFF, S_TAMIL},
        {0xC00, 0xC7F, S_TELUGU},     {0xC80, 0xCFF, S_KANNADA},     {0xD00, 0xD7F, S_MALAYALAM},
        {0xE00, 0xE7F, S_THAI},       {0x1100, 0x11FF, S_HANGUL},    {0x3130, 0x318F, S_HANGUL},
        {0xAC00, 0xD7AF, S_HANGUL},   {0x3040, 0x30FF, S_KANA},      {0x3400, 0x4DBF, S_HAN},
        {0x4E00, 0x9FFF, S_HAN},
    };
    utf8proc_category_t cat = utf8proc_category(c);
    if (!(cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_MC)) return -1;
    for (size_t i = 0; i < COUNT(blocks); i++)
        if (c >= blocks[i].lo && c <= blocks[i].hi) return (int)blocks[i].s;
    return -1;
}

/* Frequent words, space-separated, lower case. */
static const struct { const char *lang; const char *words; } latin_words[] = {
    {"en", " the a and of to is in that it for was with as on are be this you not have by but they at from "
           "or his her which we an will can would there their what has been were all if about do your i my "
           "me he she one two three here only more some just like very how when who "},
    {"fr", " le la les des et est une un du que en dans pour qui pas ne sur au avec ce il elle sont nous vous "
           "mais ou aux par plus cette ces se sa son leur été être fait comme très "},
    {"es", " el la los las de que y en un una es por con no para se del al lo como más pero su sus le ya "
           "este esta son está muy también porque cuando sobre entre hay "},
    {"pt", " o a os as de que e do da em um uma para com não no na se por mais dos das ao como mas foi "
           "ele ela são está muito também quando sobre você isso "},
    {"de", " der die das und ist nicht ein eine zu den von mit sich des auf für im dem es auch als an "
           "wie wir ich sie aus bei nach wird sind oder noch kann "},
    {"it", " il di che e la per un una non in sono è del della le con si da gli lo ha mi ma come anche "
           "più nel alla questo questa essere molto dei delle "},
    {"nl", " de het een en van is dat niet op te zijn voor met die ook als aan er maar om bij wordt "
           "nog naar deze dit wel geen kan door heeft "},
    {"pl", " i w nie na się z jest do to że o jak ale co tak po za od są dla jego czy przez tylko "
           "może już być było bardzo także oraz "},
    {"fi", " ja on ei se että oli ovat mutta kun myös hän tai sen kuin niin joka ole voi tämä jos "
           "vain sitä ne olla mitä nyt hyvin "},
    {"sw", " na ya wa kwa ni za la katika kuwa ili lakini hii huo hiyo yake wake sana pia au kama "
           "hakuna kila watu mtu wao yeye sisi ambao "},
    {"ro", " și în de la cu nu este pe că o un care din pentru sunt se mai ca dar sau această acest "
           "fost foarte lui ei "},
    {"tr", " ve bir bu da de için ile çok ne ama daha gibi olarak var değil en sonra kadar olan her "
           "ben sen o biz onlar "},
    {"id", " dan yang di ini itu dengan untuk tidak dari dalam akan pada juga ke ada adalah saya kami "
           "mereka atau bisa sudah karena "},
    {"sv", " och att det som en är av för på med till den har inte om ett jag var men de från så "
           "eller kan också "},
};

static const struct { const char *lang; const char *words; } devanagari_words[] = {
    {"hi", " है हैं के में की और से को का एक यह पर भी नहीं था थी कि लिए साथ हम आप वह "},
    {"mr", " आहे आहेत आणि या हे व ते त्या मी आम्ही तुम्ही होते होता म्हणून पण नाही आपण "},
    {"ne", " छ छन् र पनि यो गर्न थियो भएको लागि तथा हो गरेको गर्ने उनी म हामी "},
};

/* Words of s (runs of letters, marks, digits), lower case, each as " w " for matching. */
static int word_hits(const char *s, size_t n, const char *list)
{
    int hits = 0;
    char w[160];
    for (size_t i = 0, k; i < n;) {
        size_t a = i;
        for (; i < n; i += k) {
            int32_t c = ifeval_decode(s, n, i, &k);
            utf8proc_category_t cat = utf8proc_category(c);
            if (!((cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO))) break;
        }
        if (i == a) {
            ifeval_decode(s, n, i, &k);
            i += k;
            continue;
        }
        size_t ln;
        char *low = i - a < sizeof w - 3 ? ifeval_py_lower(s + a, i - a, &ln) : NULL;
        if (low && ln < sizeof w - 3) {
            w[0] = ' ';
            memcpy(w + 1, low, ln);
            w[ln + 1] = ' ';
            w[ln + 2] = 0;
            hits += strstr(list, w) != NULL;
        }
        free(low);
    }
    return hits;
}

const char *ifeval_detect_language(const char *s, size_t n)
{
    int64_t count[S_COUNT] = {0}, total = 0;
    int64_t uk = 0, ru = 0, bg = 0, ur = 0, fa = 0, vi = 0;
    for (size_t i = 0, k; i < n; i += k) {
        int32_t c = ifeval_decode(s, n, i, &k);
        int sc = script_of(c);
        if (sc < 0) continue;
        count[sc]++;
        total++;
        int32_t l = utf8proc_tolower(c);
        uk += l == 0x456 || l == 0x457 || l == 0x454 || l == 0x491;
        ru += l == 0x44B || l == 0x44D || l == 0x451;
        bg += l == 0x44A;
        ur += c == 0x679 || c == 0x688 || c == 0x691 || c == 0x6BA || c == 0x6BE || c == 0x6D2;
        fa += c == 0x67E || c == 0x686 || c == 0x698 || c == 0x6AF || c == 0x6A9 || c == 0x6CC;
        vi += l == 0x103 || l == 0x111 || l == 0x1A1 || l == 0x1B0 || (l >= 0x1EA0 && l <= 0x1EF9);
    }
    if (total == 0) return NULL;
    int best = 0;
    for (int i = 1; i < S_COUNT; i++)
        if (count[i] > count[best]) best = i;
    static const char *single[S_COUNT] = {[S_GREEK] = "el", [S_HEBREW] = "he", [S_BENGALI] = "bn",
                                          [S_GURMUKHI] = "pa", [S_GUJARATI] = "gu", [S_TAMIL] = "ta",
                                          [S_TELUGU] = "te", [S_KANNADA] = "kn", [S_MALAYALAM] = "ml",
                                          [S_THAI] = "th", [S_HANGUL] = "ko"};
    if (single[best]) return single[best];
    if (best == S_KANA || best == S_HAN) return count[S_KANA] > 0 ? "ja" : "zh-cn";
    if (best == S_CYRILLIC) return uk ? "uk" : ru ? "ru" : bg ? "bg" : "ru";
    if (best == S_ARABIC) return ur ? "ur" : fa ? "fa" : "ar";
    if (best == S_DEVANAGARI) {
        int top = 0, top_hits = -1;
        for (int i = 0; i < (int)COUNT(devanagari_words); i++) {
            int h = word_hits(s, n, devanagari_words[i].words);
            if (h > top_hits) top = i, top_hits = h;
        }
        return devanagari_words[top].lang;
    }
    if (vi * 20 > count[S_LATIN]) return "vi";
    int top = 0, top_hits = 0;
    for (int i = 0; i < (int)COUNT(latin_words); i++) {
        int h = word_hits(s, n, latin_words[i].words);
        if (h > top_hits) top = i, top_hits = h;
    }
    if (top_hits == 0) {
        /* No listed word: a letter that only one of these languages uses, else English. */
        static const struct { const char *lang, *letters; } marks[] = {
            {"fr", "éèêàçùœëî"}, {"es", "ñ¿¡"}, {"pt", "ãõ"}, {"de", "äöüß"}, {"pl", "łąęśźżń"}};
        size_t ln;
        char *low = ifeval_py_lower(s, n, &ln);
        for (size_t i = 0; low && i < COUNT(marks); i++)
            for (const char *m = marks[i].letters; *m;) {
                size_t k;
                ifeval_decode(m, strlen(m), 0, &k);
                if (memmem(low, ln, m, k)) {
                    free(low);
                    return marks[i].lang;
                }
                m += k;
            }
        free(low);
    }
    return latin_words[top].lang;
}

const char *lu_ifeval_detect_language(const char *text) { return ifeval_detect_language(text, strlen(text)); }
