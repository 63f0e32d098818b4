"""The chat template runs sandboxed; template failures are the request's fault (400)."""

from __future__ import annotations

import pytest
from pdpair.router.errors import ApiError
from pdpair.router.tokenizer import RouterTokenizer

from tests.unit._router_fixtures import byte_bpe

MSG = [{"role": "user", "content": "hello"}]


def _tok(template: str) -> RouterTokenizer:
    return RouterTokenizer(byte_bpe(), template, "<s>", "</s>")


def test_template_sees_messages_tokens_and_generation_prompt():
    tok = _tok("{{ bos_token }}{% for m in messages %}[{{ m.role }}|{{ m['content'] | tojson }}]{% endfor %}"
               "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}")
    assert tok.render_chat(MSG) == '<s>[user|"hello"]></s>'
    assert tok.encode_chat(MSG) == byte_bpe().encode('<s>[user|"hello"]></s>', add_special_tokens=False).ids


def test_raise_exception_in_the_template_is_a_400():
    tok = _tok("{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}"
               "{% endif %}")
    with pytest.raises(ApiError) as info:
        tok.render_chat(MSG)
    assert info.value.status == 400 and "first message must be system" in info.value.message


def test_the_sandbox_blocks_python_internals():
    tok = _tok("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ApiError) as info:
        tok.render_chat(MSG)
    assert info.value.status == 400


def test_no_template_means_chat_is_refused():
    with pytest.raises(ApiError) as info:
        _tok("").render_chat(MSG)
    assert info.value.status == 400 and "/v1/completions" in info.value.message


def test_generation_tag_and_tojson_separators_render_in_the_router():
    tok = _tok("{% for m in messages %}{% generation %}{{ m | tojson(separators=(',', ':')) }}{% endgeneration %}"
               "{% endfor %}")
    assert tok.render_chat(MSG) == '{"role":"user","content":"hello"}'


@pytest.mark.parametrize("template", [
    "{{ messages[0]['content'] + 1 }}",  # TypeError
    "{{ messages[5]['content'] }}{{ (messages | first)['x'].y.z }}",  # undefined lookups
    "{{ 1 // 0 }}",  # ZeroDivisionError
    "{{ messages | tojson(separators=1) }}",  # a bad filter argument
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # RecursionError
])
def test_every_render_error_is_a_400(template):
    with pytest.raises(ApiError) as info:
        _tok(template).render_chat(MSG)
    assert info.value.status == 400 and info.value.param == "messages"


def test_a_template_that_does_not_compile_fails_construction():
    from jinja2 import TemplateSyntaxError

    with pytest.raises(TemplateSyntaxError):
        _tok("{% for m in messages %}")


def test_router_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, pdpair.router.app, pdpair.router.main; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
