import asyncio

from bot.reply import EditingSink, split_pages


def test_short_text_is_one_page():
    assert split_pages("hello", 100) == ["hello"]


def test_pages_respect_the_limit_and_keep_every_word():
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 40 for i in range(30))
    pages = split_pages(text, 500)
    assert all(len(p) <= 500 for p in pages)
    assert " ".join(" ".join(pages).split()) == " ".join(text.split())


def test_split_prefers_a_paragraph_break_before_a_code_block():
    text = "intro " * 30 + "\n\n```python\n" + "x = 1\n" * 20 + "```\n"
    first, *rest = split_pages(text, 200)
    assert "```" not in first
    assert rest[0].startswith("```python")


def test_a_code_block_longer_than_a_page_is_closed_and_reopened():
    code = "\n".join(f"print({i})" for i in range(400))
    text = f"Here:\n\n```python\n{code}\n```\nDone."
    pages = split_pages(text, 500)
    assert len(pages) > 1
    for page in pages:
        assert len(page) <= 500
        assert page.count("```") % 2 == 0, page  # every page is valid Markdown on its own
    for page in pages[1:-1]:
        assert page.startswith("```python")
    joined = "\n".join(p.removeprefix("```python\n").removesuffix("\n```") for p in pages)
    assert all(f"print({i})" in joined for i in range(400))


def test_a_long_line_without_spaces_is_cut_hard():
    pages = split_pages("x" * 1050, 500)
    assert [len(p) for p in pages] == [496, 496, 58]


class RecordingEditor:
    """A stand-in for a platform's post/edit API (not Parley code)."""

    def __init__(self):
        self.calls = []
        self.messages = {}

    async def post(self, text):
        mid = str(len(self.messages))
        self.messages[mid] = text
        self.calls.append(("post", mid, text))
        return mid

    async def edit(self, mid, text):
        self.messages[mid] = text
        self.calls.append(("edit", mid, text))


async def _tokens(parts, delay=0.0):
    for p in parts:
        await asyncio.sleep(delay)
        yield p


async def test_editing_sink_posts_first_then_edits_and_ends_with_the_full_text():
    editor = RecordingEditor()
    parts = [f"tok{i} " for i in range(50)]
    text = await EditingSink(editor, limit=2000, interval=0.05).stream(_tokens(parts, 0.005))
    assert text == "".join(parts)
    assert editor.calls[0][0] == "post"
    assert editor.messages == {"0": text}
    # Coalesced: far fewer edits than tokens.
    assert 1 < len(editor.calls) < len(parts) / 2


async def test_editing_sink_continues_in_new_messages_past_the_limit():
    editor = RecordingEditor()
    parts = [f"line of text number {i}\n" for i in range(300)]
    text = await EditingSink(editor, limit=1000, interval=0).stream(_tokens(parts))
    shown = [editor.messages[k] for k in sorted(editor.messages, key=int)]
    assert len(shown) > 5 and all(len(m) <= 1000 for m in shown)
    assert "\n".join(shown).split() == text.split()


async def test_editing_sink_stays_silent_for_an_empty_stream():
    editor = RecordingEditor()
    assert await EditingSink(editor, limit=100, interval=0).stream(_tokens(["", "  "])) == "  "
    assert editor.calls == []
