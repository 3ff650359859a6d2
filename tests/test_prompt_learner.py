"""Prompt learners (docs/method.md §3, §9): token layout, initialisation, trainability, OrdinalCLIP interpolation."""
import pytest
import torch
from open_clip.tokenizer import _tokenizer as bpe

from numclip_mm.models.prompt_learner import (
    ConceptPromptLearner,
    InterpolatedRankPromptLearner,
    PromptTemplate,
    rank_interpolation_weights,
)
from numclip_mm.models.text_encoder import OpenCLIPTextEncoder
from numclip_mm.tasks import get_task

SOS, EOS = 49406, 49407


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def text_encoder():
    torch.manual_seed(0)
    return OpenCLIPTextEncoder(model_name='numclip-tiny')


def n_tokens(text):
    """BPE token count without SOS/EOS, from the tokenizer itself (independent of the learner's helper)."""
    return len(bpe.encode(text))


def expected_ids(task, k, length):
    ids = [SOS, *bpe.encode(task.context), *bpe.encode(task.concepts[k]), *bpe.encode('.'), EOS]
    return ids + [0] * (length - len(ids))


@pytest.mark.parametrize('task_name', ['count', 'age'])
def test_eos_index_per_bin(text_encoder, task_name):
    task = get_task(task_name)
    learner = ConceptPromptLearner(text_encoder, task)
    expected = [1 + n_tokens(task.context) + n_tokens(c) + n_tokens('.') for c in task.concepts]
    assert learner.eos_index.tolist() == expected
    if task_name == 'count':  # 'a picture of objects, there are' = 7 tokens, every concept one token
        assert expected == [10] * 5
    else:  # 'age estimation: the person is a' = 8 tokens; 'young adult' etc. are two tokens
        assert n_tokens('young adult') == 2
        assert expected == [11, 11, 12, 12, 12]


def test_multi_token_concept_slots(text_encoder):
    task = get_task('age')
    learner = ConceptPromptLearner(text_encoder, task)
    m = n_tokens(task.context)
    assert learner.prompt.num_context == m == 8
    assert learner.context.shape == (m, text_encoder.width)
    counts = [n_tokens(c) for c in task.concepts]  # 1, 1, 2, 2, 2
    assert learner.concepts.shape == (sum(counts), text_encoder.width)
    rows, cols = [], []
    for k, n in enumerate(counts):
        rows += [k] * n
        cols += list(range(1 + m, 1 + m + n))
    assert learner.prompt.class_rows.tolist() == rows
    assert learner.prompt.class_cols.tolist() == cols


@pytest.mark.parametrize('task_name', ['count', 'age'])
def test_template_rows_are_token_embeddings(text_encoder, task_name):
    task = get_task(task_name)
    learner = ConceptPromptLearner(text_encoder, task)
    length = text_encoder.context_length
    ids = torch.tensor([expected_ids(task, k, length) for k in range(task.num_bins)])
    with torch.no_grad():
        emb = text_encoder.token_embedding(ids)
    assert learner.prompt.template.shape == (task.num_bins, length, text_encoder.width)
    torch.testing.assert_close(learner.prompt.template, emb)
    # the eos position really holds the EOS embedding
    eos_rows = learner.prompt.template[torch.arange(task.num_bins), learner.eos_index]
    torch.testing.assert_close(eos_rows, text_encoder.token_embedding.weight[EOS].expand_as(eos_rows))
    # at initialisation the forward pass reproduces the template exactly
    with torch.no_grad():
        torch.testing.assert_close(learner(), learner.prompt.template)
    # context and concept parameters are CLIP's embedding rows of their words
    m = learner.prompt.num_context
    torch.testing.assert_close(learner.context, emb[0, 1:1 + m])
    concept_ids = [i for c in task.concepts for i in bpe.encode(c)]
    torch.testing.assert_close(learner.concepts.detach(), text_encoder.token_embedding.weight[concept_ids])


def test_forward_changes_only_concept_slots(text_encoder):
    task = get_task('age')
    learner = ConceptPromptLearner(text_encoder, task)
    with torch.no_grad():
        before = learner().clone()
        new = torch.randn_like(learner.concepts)
        learner.concepts.copy_(new)
        after = learner()
    changed = (after != before).any(dim=-1)  # (K, L)
    mask = torch.zeros_like(changed)
    mask[learner.prompt.class_rows, learner.prompt.class_cols] = True
    assert torch.equal(changed, mask)
    torch.testing.assert_close(after[learner.prompt.class_rows, learner.prompt.class_cols], new)


def test_forward_changes_context_in_every_row(text_encoder):
    learner = ConceptPromptLearner(text_encoder, 'count', learn_context=True)
    m = learner.prompt.num_context
    with torch.no_grad():
        before = learner().clone()
        learner.context.add_(1.0)
        after = learner()
    changed = (after != before).any(dim=-1)
    mask = torch.zeros_like(changed)
    mask[:, 1:1 + m] = True
    assert torch.equal(changed, mask)


@pytest.mark.parametrize('learn_context,learn_concepts', [(False, True), (True, True), (True, False), (False, False)])
def test_trainability_flags(text_encoder, learn_context, learn_concepts):
    learner = ConceptPromptLearner(text_encoder, 'count', learn_context=learn_context, learn_concepts=learn_concepts)
    assert learner.context.requires_grad is learn_context
    assert learner.concepts.requires_grad is learn_concepts
    assert {n for n, p in learner.named_parameters()} == {'context', 'concepts'}
    out = learner()
    assert out.requires_grad is (learn_context or learn_concepts)
    # the template is a persistent buffer (saved in checkpoints), never a parameter
    assert 'prompt.template' in learner.state_dict()


def test_gradient_reaches_only_trainable_prompt_parts(text_encoder):
    learner = ConceptPromptLearner(text_encoder, 'age', learn_context=False, learn_concepts=True)
    feats = text_encoder(learner(), learner.eos_index)
    feats.square().sum().backward()
    assert learner.context.grad is None
    assert learner.concepts.grad is not None and learner.concepts.grad.abs().sum() > 0
    assert all(p.grad is None for p in text_encoder.parameters())


def test_random_context(text_encoder):
    torch.manual_seed(0)
    learner = ConceptPromptLearner(text_encoder, 'count', learn_context=True, num_random_context=4)
    assert learner.context.shape == (4, text_encoder.width)
    assert learner.prompt.num_context == 4
    assert learner.context.std().item() == pytest.approx(0.02, rel=0.5)
    # [SOS] 4 ctx 1 concept '.' [EOS]
    assert learner.eos_index.tolist() == [1 + 4 + 1 + 1] * 5


def test_prompt_longer_than_context_length_raises(text_encoder):
    long_task = dict(name='long', edges=(0, 1), concepts=('a', 'b'), context=' '.join(['word'] * 30))
    assert text_encoder.context_length == 24
    with pytest.raises(ValueError, match='context length'):
        ConceptPromptLearner(text_encoder, long_task)
    # exactly at the limit is fine: SOS + 20 ctx + 1 concept + '.' + EOS = 24
    fits = dict(name='fits', edges=(0, 1), concepts=('a', 'b'), context=' '.join(['word'] * 20))
    learner = ConceptPromptLearner(text_encoder, fits)
    assert learner.eos_index.tolist() == [23, 23]
    too_long = dict(fits, context=' '.join(['word'] * 21))
    with pytest.raises(ValueError):
        ConceptPromptLearner(text_encoder, too_long)


def test_prompt_template_direct(text_encoder):
    ids = [bpe.encode('one'), bpe.encode('two three')]
    template = PromptTemplate(text_encoder, 'the number', ids)
    m = n_tokens('the number')
    assert template.eos_index.tolist() == [1 + m + 1 + 1, 1 + m + 2 + 1]
    ctx = torch.zeros(m, text_encoder.width)
    cls = torch.ones(3, text_encoder.width)
    out = template.fill(ctx, cls)
    assert out.shape == (2, text_encoder.context_length, text_encoder.width)
    assert torch.all(out[:, 1:1 + m] == 0)
    assert torch.all(out[0, 1 + m] == 1) and torch.all(out[1, 1 + m:1 + m + 2] == 1)
    torch.testing.assert_close(out[0, 1 + m + 1], template.template[0, 1 + m + 1])  # the '.' stays


# --------------------------------------------------------------------------------------------------------------
# OrdinalCLIP interpolation
# --------------------------------------------------------------------------------------------------------------
def test_rank_interpolation_linear_by_hand():
    # C=5, Kb=3: base ranks at 0, 2, 4; phi(d) = 1 - d/4, normalised per row.
    expected = torch.tensor([
        [1.0, 0.5, 0.0],        # d = 0, 2, 4   -> / 1.5
        [0.75, 0.75, 0.25],     # d = 1, 1, 3   -> / 1.75
        [0.5, 1.0, 0.5],        # d = 2, 0, 2   -> / 2
        [0.25, 0.75, 0.75],
        [0.0, 0.5, 1.0],
    ])
    expected = expected / expected.sum(1, keepdim=True)
    w = rank_interpolation_weights(5, 3, 'linear')
    assert w.shape == (5, 3)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w[1], torch.tensor([3 / 7, 3 / 7, 1 / 7]))
    torch.testing.assert_close(w.sum(1), torch.ones(5))


@pytest.mark.parametrize('c,kb,kind', [(5, 3, 'inv_prop'), (10, 4, 'linear'), (101, 3, 'linear'), (7, 7, 'inv_prop')])
def test_rank_interpolation_rows_sum_to_one(c, kb, kind):
    w = rank_interpolation_weights(c, kb, kind)
    assert w.shape == (c, kb)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(c))


def test_rank_interpolation_inv_prop_is_near_one_hot_at_base_ranks():
    w = rank_interpolation_weights(5, 3, 'inv_prop')
    for row, base in ((0, 0), (2, 1), (4, 2)):
        assert w[row, base].item() > 0.9999


def test_rank_interpolation_bad_args():
    with pytest.raises(ValueError):
        rank_interpolation_weights(5, 1)
    with pytest.raises(ValueError):
        rank_interpolation_weights(3, 4)
    with pytest.raises(ValueError, match='interpolation'):
        rank_interpolation_weights(5, 3, 'cubic')


def test_interpolated_rank_prompt_learner(text_encoder):
    torch.manual_seed(0)
    learner = InterpolatedRankPromptLearner(text_encoder, 'count', num_base_ranks=3)
    assert learner.base_ranks.shape == (3, text_encoder.width)
    assert learner.context.requires_grad and learner.base_ranks.requires_grad
    torch.testing.assert_close(learner.weights, rank_interpolation_weights(5, 3))
    out = learner()
    m = learner.prompt.num_context
    ranks = learner.weights @ learner.base_ranks
    torch.testing.assert_close(out[:, 1 + m], ranks)
    # every rank prompt has the same layout: SOS, ctx, 1 rank token, '.', EOS
    assert learner.eos_index.tolist() == [1 + m + 1 + 1] * 5
    out.sum().backward()
    assert learner.base_ranks.grad is not None and learner.context.grad is not None


def test_interpolated_rank_prompt_learner_multi_token(text_encoder):
    learner = InterpolatedRankPromptLearner(text_encoder, 'count', num_base_ranks=2, tokens_per_rank=2,
                                            learn_context=False)
    d = text_encoder.width
    assert learner.base_ranks.shape == (2, 2 * d)
    assert not learner.context.requires_grad
    out = learner()
    m = learner.prompt.num_context
    ranks = (learner.weights @ learner.base_ranks).reshape(5, 2, d)
    torch.testing.assert_close(out[:, 1 + m:1 + m + 2], ranks)
    assert learner.eos_index.tolist() == [1 + m + 2 + 1] * 5


def test_text_encoder_matches_open_clip_encode_text():
    """Fed with the plain token embeddings of a prompt, the encoder reproduces open_clip's own encode_text."""
    from numclip_mm.models.clip_loader import build_open_clip
    torch.manual_seed(3)
    clip = build_open_clip('numclip-tiny')
    encoder = OpenCLIPTextEncoder(clip_model=clip)
    assert all(not p.requires_grad for p in encoder.parameters())
    texts = ['a picture of objects, there are none.', 'age estimation: the person is a young adult.']
    ids = encoder.tokenize(texts)
    assert ids.shape == (2, 24)
    eos = ids.argmax(dim=-1)
    with torch.no_grad():
        ours = encoder(encoder.token_embedding(ids), eos)
        theirs = clip.encode_text(ids)
    assert ours.shape == (2, encoder.embed_dim) == (2, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and a learner's prompts at initialisation are exactly those token sequences
    learner = ConceptPromptLearner(encoder, 'count')
    with torch.no_grad():
        from_learner = encoder(learner(), learner.eos_index)
        direct = clip.encode_text(encoder.tokenize([f'{get_task("count").context} {c}.'
                                                    for c in get_task('count').concepts]))
    torch.testing.assert_close(from_learner, direct, rtol=1e-5, atol=1e-5)
