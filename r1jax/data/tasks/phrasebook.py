"""English and Chinese phrasings of the word problems (questions and worked-solution steps).

Each kind has one question template and a list of step templates per language, filled with
`str.format` from the numbers that `word_problems` computes plus `name`, `name2` and `item`.
Keeping the text apart from the arithmetic lets both languages share one generator, so a
problem and its translation have the same key (and split).
"""

LANGUAGES = ("en", "zh")

NAMES = {
    "en": ("Alice", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal"),
    "zh": ("小明", "小红", "李华", "王芳", "张伟", "刘洋", "陈静", "赵磊", "周杰", "孙丽"),
}
ITEMS = {
    "en": ("apples", "pencils", "notebooks", "oranges", "stickers", "cookies"),
    "zh": ("苹果", "铅笔", "笔记本", "橙子", "贴纸", "饼干"),
}
ANSWER_LINE = {"en": "The answer is {answer}", "zh": "答案是 {answer}"}

TEXT = {
    "en": {
        "shopping": (
            "{name} buys {n} {item} that cost ${p} each and pays with ${bill}. "
            "How much change does {name} get, in dollars?",
            ["The {item} cost {n} * {p} = {cost} dollars.",
             "The change is {bill} - {cost} = {answer} dollars."],
        ),
        "ages": (
            "{name} is {d} years older than {name2}. In {k} years, the sum of their ages "
            "will be {s}. How old is {name2} now?",
            ["Let x be {name2}'s age now. In {k} years {name2} will be x + {k} and {name} "
             "will be x + {d} + {k}.",
             "So 2x + {d} + {k2} = {s}, because 2 * {k} = {k2}.",
             "2x = {s} - {d} - {k2} = {two_x}.",
             "x = {two_x} / 2 = {answer}."],
        ),
        "travel": (
            "A car drives at {v} km/h for {t} hours and then at {w} km/h for {u} hours. "
            "How many kilometres does it travel in total?",
            ["First part: {v} * {t} = {d1} km.",
             "Second part: {w} * {u} = {d2} km.",
             "Total: {d1} + {d2} = {answer} km."],
        ),
        "reading": (
            "{name} reads {r} pages a day. The book has {pages} pages and {name} has already "
            "read for {d} days. How many more days does {name} need to finish the book?",
            ["Pages read so far: {r} * {d} = {read}.",
             "Pages left: {pages} - {read} = {left}.",
             "Days needed: {left} / {r} = {answer}."],
        ),
        "sharing": (
            "{name} has {n} {item} and shares them equally among {k} friends, keeping the "
            "ones left over. How many {item} does each friend get?",
            ["{n} / {k} = {answer} remainder {r}.",
             "Each friend gets {answer} {item}, with {r} left over."],
        ),
    },
    "zh": {
        "shopping": (
            "{name}买了{n}个{item}，每个{p}元，付了{bill}元。应该找回多少元？",
            ["{item}一共花了 {n} * {p} = {cost} 元。",
             "找回 {bill} - {cost} = {answer} 元。"],
        ),
        "ages": (
            "{name}比{name2}大{d}岁。{k}年后，两人的年龄之和是{s}岁。{name2}现在几岁？",
            ["设{name2}现在 x 岁。{k}年后{name2} x + {k} 岁，{name} x + {d} + {k} 岁。",
             "所以 2x + {d} + {k2} = {s}，因为 2 * {k} = {k2}。",
             "2x = {s} - {d} - {k2} = {two_x}。",
             "x = {two_x} / 2 = {answer}。"],
        ),
        "travel": (
            "一辆汽车以每小时{v}千米的速度行驶了{t}小时，然后以每小时{w}千米的速度行驶了"
            "{u}小时。它一共行驶了多少千米？",
            ["第一段：{v} * {t} = {d1} 千米。",
             "第二段：{w} * {u} = {d2} 千米。",
             "一共：{d1} + {d2} = {answer} 千米。"],
        ),
        "reading": (
            "{name}每天读{r}页书。这本书共{pages}页，{name}已经读了{d}天。还需要多少天才能读完？",
            ["已经读了 {r} * {d} = {read} 页。",
             "还剩 {pages} - {read} = {left} 页。",
             "还需要 {left} / {r} = {answer} 天。"],
        ),
        "sharing": (
            "{name}有{n}个{item}，平均分给{k}个朋友，剩下的自己留着。每个朋友分到几个{item}？",
            ["{n} / {k} = {answer} 余 {r}。",
             "每个朋友分到 {answer} 个{item}，剩下 {r} 个。"],
        ),
    },
}
