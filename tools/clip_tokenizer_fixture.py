"""Writes tests/fixtures/clip_tokenizer_ids.json with the authors' own tokenizer: OpenGVLab/LCL's open_clip
SimpleTokenizer, built by their factory for LCL_ViT-B-16_laion (CLIP's BPE plus <img_placehold>, <start_of_img>,
<end_of_img>). tests/test_clip_tokenizer.py checks that data_pipelines.clip_tokenizer gives the same ids without
their code. The fixture holds strings and numbers only.

Set-up as tools/lcl_parity_fixture.py (their repository exported to a folder, a venv with the CPU torch wheel and
their dependencies, ftfy and regex among them):
  /tmp/venv-ref/bin/python tools/clip_tokenizer_fixture.py --src=/tmp/lcl_ref/src [--torchvision_shim_dir=DIR]
With the shim their package is imported and open_clip.get_tokenizer builds the tokenizer exactly as their training
does; without it their tokenizer module alone is loaded from its file (it needs torch, not torchvision) and given the
model config's tokenizer_kwargs, which is what get_tokenizer does for this model.

Contents:
  strings   [{"name", "text", "ids"}]: ids = their encode(text) (no <start_of_text>/<end_of_text>, as their
            MMC4 and LAION loaders call it); none contains a special token's text
  joined    [{"sentences", "ids"}]: ids = their encode(" ".join(sentences)), the way their MMC4 loader joins a
            document's sentences before encoding it once (the row builder here encodes each sentence on its own)
  special_strings  [{"text", "ids"}]: text holding the special pieces, which their encode turns into special ids
            (the one deliberate difference: data_pipelines.clip_tokenizer never does)
  specials  {piece: id} from their encoder; vocab_size
"""
import argparse
import importlib.util
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                   "clip_tokenizer_ids.json")
MODEL = "LCL_ViT-B-16_laion"
SPECIAL_PIECES = ["<start_of_text>", "<end_of_text>", "<img_placehold>", "<start_of_img>", "<end_of_img>"]

_LONG_PARTS = [
    "Latent compression learning trains a vision encoder on 1,234 interleaved documents (MMC4, OBELICS) & pairs.",
    "Der Fuchs sprang über den faulen Hund; Ärger, Öl und Übermut.",
    "机器学习模型在大规模图文数据上进行预训练。",
    "画像とテキストが交互に並ぶ文書。",
    "이미지와 텍스트가 섞인 문서입니다.",
    "Привет, мир! Это длинный текст.",
    "Η γρήγορη καφέ αλεπού.",
    "مرحبا بالعالم، هذا نص طويل.",
    "नमस्ते दुनिया, यह एक लंबा पाठ है।",
    "Emoji 👍🏽 and 👨‍👩‍👧‍👦 and 🇫🇷 in a row!!!",
    "https://example.com/path?q=a+b&x=1#frag — it's 3.14159 km, we'll see...",
    "def f(x):\treturn {'a': [1, 2, 3]}  # code",
    "Tiếng Việt có dấu: Hà Nội, Sài Gòn.",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows. &amp;amp; &lt;b&gt; &#39;quoted&#39;",
]


def parity_strings() -> list[tuple[str, str]]:
  """(name, text): what a web corpus holds, and the corners where cleaning and splitting differ between libraries."""
  long_text = " ".join(_LONG_PARTS[i % len(_LONG_PARTS)] + f" [{i}]" for i in range(120))
  return [
      ("english", "A photo of a dog, sitting on the grass at 3:45pm (about 20 minutes)."),
      ("punctuation_runs", "Wait... what?!?! -- \"quoted\" 'single' (parens) [brackets] {braces} <angle> ~tilde~"),
      ("numbers", "In 2024 there were 1,234,567.89 USD; 42nd street; 3.14159; 10^6; 1e-3; #1; 50%; $9.99"),
      ("contractions", "it's we'll they're I've you'd she'd he'll I'm isn't can't won't y'all o'clock"),
      ("contractions_upper", "IT'S WE'LL THEY'RE I'VE YOU'D I'M DON'T"),
      ("long_s_contraction", "it'ſ a long s: ſtraße"),
      ("chinese", "今天天气很好，我们去公园散步吧。"),
      ("japanese", "東京は日本の首都です。ひらがなとカタカナ、漢字を使います。"),
      ("korean", "안녕하세요, 만나서 반갑습니다. 한국어 문장입니다."),
      ("arabic", "اللغة العربية جميلة جداً، وهذه جملة للاختبار."),
      ("hindi", "हिन्दी भाषा में यह एक परीक्षण वाक्य है।"),
      ("russian", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
      ("greek", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. ΑΒΓΔ"),
      ("german", "Größenwahn, Übermaß, Äpfel und Öfen: Fußgängerübergänge in München."),
      ("turkish_dotted_i", "İstanbul'da İŞİ BİTİRDİ; ıslak ılık"),
      ("vietnamese", "Tiếng Việt có nhiều dấu: ă, â, ê, ô, ơ, ư, đ; Nguyễn Trãi."),
      ("combining_marks", "cafe\u0301 nai\u0308ve e\u0300 a\u0323\u0302"),
      ("nfd", "\u0041\u030a\u006e\u0067\u0073\u0074\u0072\u006f\u0308\u006d Cre\u0300me bru\u0302le\u0301e"),
      ("emoji_single", "I love it 😀 so much 🎉"),
      ("emoji_skin_tones", "👍🏻 👍🏼 👍🏽 👍🏾 👍🏿 👋🏽"),
      ("emoji_zwj", "family 👨‍👩‍👧‍👦 couple 👩‍❤️‍👨 technologist 🧑🏽‍💻"),
      ("emoji_flags", "🇺🇸 🇫🇷 🇯🇵 🇩🇪 🏴󠁧󠁢󠁳󠁣󠁴󠁿"),
      ("mojibake_mona_lisa", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows."),
      ("mojibake_latin1", "cafÃ© crÃ¨me, naÃ¯ve, â€œquotesâ€\x9d"),
      ("html_entities", "Tom &amp; Jerry &lt;3 &gt; &quot;cheese&quot; it&#39;s &#x27;ok&#x27; &nbsp;&copy;2024"),
      ("html_double_escaped", "Fish &amp;amp; chips &amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &amp;#39;x&amp;#39;"),
      ("html_tags", "<p>Hello <b>world</b></p><br/>"),
      # ftfy unescapes entities itself only in text without "<": here only the two html.unescape calls do.
      ("html_escaped_beside_tags", "<p>Fish &amp;amp; chips &amp;lt;3 &amp;amp;amp; &eacute;</p>"),
      ("whitespace_mixed", "tabs\there\tand\nnewlines\r\nand   multiple    spaces\u00a0non\u00a0breaking\u2003em"),
      ("whitespace_edges", "\n\t  leading and trailing  \t\n"),
      ("empty", ""),
      ("whitespace_only", " \t\n\u00a0\u3000 "),
      ("url", "https://www.example.com/a/b-c_d?query=1&lang=en#section-2 http://t.co/AbC123 www.foo.org"),
      ("email", "contact: first.last+tag@example.co.uk"),
      ("code", "for (int i = 0; i < n; ++i) { x[i] += y[i] * 2.0f; } // C\nimport numpy as np; np.zeros((3, 4))"),
      ("markdown", "# Title\n\n* item one\n* **bold** _italic_ `code`\n\n> quote"),
      ("math_symbols", "∑ x² ≤ ∞ ± √2 ≈ 1.414 → ∀ε>0 ∃δ; ½ ¾ ①②③ Ⅳ"),
      ("fullwidth", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３ ！？"),
      ("ligatures", "ﬁnance ﬂow ﬀ Æsop œuvre"),
      ("control_chars", "bell\x07 nul\x00 esc\x1b del\x7f zwsp\u200b zwj\u200d bom\ufeff end"),
      # Letters of Unicode 17 (Latin U+A7CE, Armenian U+0558, Telugu U+0C5C, CJK Extension J U+323B0...), which
      # `regex` knows and the Rust Split pre-tokenizer's Oniguruma tables do not, beside older letters.
      ("recent_unicode_letters", "ab\ua7cecd x\u0558y, \u0c24\u0c5c! \u6f22\U000323b0\u5b57 \U000323b1."),
      ("repeated_chars", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!!!!!!!!!!!! ---------- ..........."),
      ("single_char", "x"),
      ("long_mixed", long_text),
  ]


def joined_documents() -> list[list[str]]:
  """Documents as their MMC4 loader sees them: sentences joined with one space, then encoded once."""
  return [
      ["A photo of a dog.", "It's sitting on the grass!", "(About 20 minutes.)"],
      ["今天天气很好。", "我们去公园散步吧！", "Let's go."],
      ["Tom &amp; Jerry", "&lt;3", "cafÃ© crÃ¨me"],
      ["first line\n", "\tsecond", "  third  "],
      ["Emoji 👍🏽", "👨‍👩‍👧‍👦", "🇫🇷."],
      ["ends with a hyphen-", "-and starts with one", "punct:", ";run"],
  ]


def special_strings() -> list[str]:
  return ["<start_of_img>", "a <start_of_img> b", "<START_OF_IMG> upper case",
          "x <img_placehold><img_placehold> y", "<start_of_text> hi <end_of_text>", "text then <end_of_img>"]


def authors_tokenizer(src: str, shim_dir):
  """Their tokenizer for MODEL: by their factory when their package imports, else their module from its file."""
  if shim_dir:
    sys.path.insert(0, shim_dir)
    import tv_shim  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    sys.path.insert(0, src)
    import open_clip  # pylint: disable=import-outside-toplevel
    return open_clip.get_tokenizer(MODEL)
  folder = os.path.join(src, "open_clip")
  spec = importlib.util.spec_from_file_location("lcl_ref_tokenizer", os.path.join(folder, "tokenizer.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with open(os.path.join(folder, "model_configs", f"{MODEL}.json")) as f:
    kwargs = json.load(f)["text_cfg"]["tokenizer_kwargs"]
  return module.SimpleTokenizer(**kwargs)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--src", required=True, help="the exported repository's src/ (holds open_clip/)")
  p.add_argument("--torchvision_shim_dir", default=None,
                 help="a folder with tv_shim.py, imported first; then their package and factory are used")
  p.add_argument("--output", default=OUT)
  args = p.parse_args()
  tok = authors_tokenizer(args.src, args.torchvision_shim_dir)
  strings = parity_strings()
  for name, text in strings:
    assert not any(piece in text.lower() for piece in SPECIAL_PIECES), name  # deliberate difference: not parity
  fixture = {
      "source": f"OpenGVLab/LCL open_clip SimpleTokenizer for {MODEL}: ids of encode(text)",
      "vocab_size": tok.vocab_size,
      "specials": {piece: tok.encoder[piece] for piece in SPECIAL_PIECES},
      "strings": [{"name": name, "text": text, "ids": tok.encode(text)} for name, text in strings],
      "joined": [{"sentences": s, "ids": tok.encode(" ".join(s))} for s in joined_documents()],
      "special_strings": [{"text": text, "ids": tok.encode(text)} for text in special_strings()],
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(fixture, f, ensure_ascii=True, indent=None, separators=(",", ":"))
    f.write("\n")
  print(f"{args.output}: {len(fixture['strings'])} strings, {len(fixture['joined'])} joined documents, "
        f"{sum(len(s['ids']) for s in fixture['strings'])} ids")


if __name__ == "__main__":
  main()
