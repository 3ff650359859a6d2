"""NumCLIP model parts and the assembled classifier on the tiny random-initialised CLIP ('numclip-tiny')."""
import copy
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from numclip_mm.models.adapter import ResidualAdapter
from numclip_mm.models.regressor import SSRRegressor
from numclip_mm.tasks import get_task

TASK = get_task('count')
ANCHORS = [0.0, 2.0, 4.0, 6.0, 8.0]
PREPROCESSOR = dict(type='ClsDataPreprocessor', mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def model_cfg(model_name='numclip-tiny', head=None, backbone=None, neck='adapter'):
    head_cfg = dict(type='NumCLIPHead', task='count')
    head_cfg.update(head or {})
    return dict(type='NumCLIP', clip=dict(model_name=model_name),
                backbone=dict(type='OpenCLIPVisionBackbone', **(backbone or {})),
                neck=dict(type='ResidualAdapter') if neck == 'adapter' else neck,
                head=head_cfg, data_preprocessor=PREPROCESSOR)


def build(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MODELS.build(model_cfg(**kwargs))


def samples(values):
    out = []
    for v in values:
        d = DataSample().set_gt_label(int(TASK.value_to_bin(v)))
        d.set_field(float(v), 'gt_value')
        out.append(d)
    return out


@pytest.fixture(scope='module')
def tiny():
    """The default NumCLIP on numclip-tiny, in eval mode. Tests must not modify it."""
    return build().eval()


@pytest.fixture(scope='module')
def batch():
    g = torch.Generator().manual_seed(7)
    values = [0, 1, 3, 4, 5, 7, 8, 9]
    return torch.randn(len(values), 3, 32, 32, generator=g), values


# --------------------------------------------------------------------------------------------------------------
# SSRRegressor (docs/method.md §6)
# --------------------------------------------------------------------------------------------------------------
def test_ssr_parameter_count():
    reg = SSRRegressor(ANCHORS)
    assert sum(p.numel() for p in reg.parameters()) == 115
    assert reg.fc1.weight.shape == (10, 5) and reg.fc1.bias.shape == (10,)
    assert reg.fc2.weight.shape == (5, 10) and reg.fc2.bias.shape == (5,)
    assert torch.all(reg.fc1.bias == 0) and torch.all(reg.fc2.bias == 0)
    assert reg.fc1.weight.std().item() < 5e-3


def test_ssr_init_is_expectation():
    torch.manual_seed(0)
    reg = SSRRegressor(ANCHORS)
    logits = torch.randn(16, 5) * 10
    expected = logits.softmax(-1) @ torch.tensor(ANCHORS)
    with torch.no_grad():
        torch.testing.assert_close(reg(logits), expected, rtol=1e-3, atol=1e-3)


def test_ssr_formula_by_hand():
    reg = SSRRegressor([0.0, 13.0, 19.0], lam=0.5)
    w1 = np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6], [-0.7, 0.2, 0.9],
                   [0.1, 0.1, 0.1], [0.0, -0.5, 0.3], [0.6, 0.0, -0.1]])
    b1 = np.array([0.1, -0.2, 0.0, 0.3, -0.1, 0.05])
    w2 = np.array([[0.2, -0.3, 0.1, 0.4, 0.0, -0.2], [0.5, 0.1, -0.4, 0.0, 0.3, 0.2],
                   [-0.1, 0.2, 0.3, -0.5, 0.1, 0.4]])
    b2 = np.array([0.05, -0.1, 0.2])
    with torch.no_grad():
        reg.fc1.weight.copy_(torch.tensor(w1))
        reg.fc1.bias.copy_(torch.tensor(b1))
        reg.fc2.weight.copy_(torch.tensor(w2))
        reg.fc2.bias.copy_(torch.tensor(b2))
    logits = [[1.0, 2.0, -0.5], [-1.0, 0.5, 3.0]]
    anchors, lam = [0.0, 13.0, 19.0], 0.5
    expected = []
    for row in logits:
        e = [np.exp(v) for v in row]
        p = [v / sum(e) for v in e]
        h = [max(0.0, sum(w1[i][j] * row[j] for j in range(3)) + b1[i]) for i in range(6)]
        delta = [np.tanh(sum(w2[k][i] * h[i] for i in range(6)) + b2[k]) for k in range(3)]
        expected.append(sum(p[k] * anchors[k] / (1 + lam * delta[k]) for k in range(3)))
    with torch.no_grad():
        out = reg(torch.tensor(logits))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)


def test_ssr_finite_when_tanh_saturates():
    """Doc 2.6: delta = tanh(.) lies in the open interval (-1, 1), so 1 + lam * delta > 0 for lam = 1 and the
    prediction is finite. In float32 tanh(x) rounds to exactly -1 for x < ~-9.01; the regressor must still give
    finite values and gradients (a bin with anchor 0 gives 0 * 0 / 0 otherwise)."""
    reg = SSRRegressor(ANCHORS)
    with torch.no_grad():
        reg.fc2.bias.fill_(-10.0)
    logits = torch.tensor([[5.0, 1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    out = reg(logits)
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_ssr_gradients_flow_to_logits():
    reg = SSRRegressor(ANCHORS)
    logits = torch.randn(4, 5, requires_grad=True)
    reg(logits).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert all(p.grad is not None for p in reg.parameters())


# --------------------------------------------------------------------------------------------------------------
# ResidualAdapter (docs/method.md §4)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('model_name,width', [('numclip-tiny', 32), ('numclip-demo', 64)])
def test_adapter_width_from_backbone(model_name, width):
    model = build(model_name=model_name)
    assert model.backbone.embed_dim == width
    assert model.neck.down.in_features == width
    assert model.neck.down.out_features == width // 4
    assert model.neck.up.out_features == width
    assert model.neck.down.bias is None and model.neck.up.bias is None
    size = 32 if model_name == 'numclip-tiny' else 64
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size), mode='tensor')
    assert logits.shape == (2, 5)


def test_adapter_output_by_hand():
    adapter = ResidualAdapter(in_channels=4, reduction=2)
    down = np.array([[1.0, -1.0, 0.5, 0.0], [0.2, 0.3, -0.4, 1.0]])
    up = np.array([[1.0, 0.0], [-1.0, 0.5], [0.3, 0.3], [0.0, -2.0]])
    with torch.no_grad():
        adapter.down.weight.copy_(torch.tensor(down))
        adapter.up.weight.copy_(torch.tensor(up))
    f = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]])
    expected = []
    for row in f:
        hidden = [max(0.0, sum(down[i][j] * row[j] for j in range(4))) for i in range(2)]
        g = [max(0.0, sum(up[o][i] * hidden[i] for i in range(2))) for o in range(4)]
        expected.append([0.8 * g[o] + 0.2 * row[o] for o in range(4)])
    with torch.no_grad():
        (out,) = adapter((torch.tensor(f, dtype=torch.float32),))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_adapter_ratio_validation():
    with pytest.raises(ValueError):
        ResidualAdapter(in_channels=8, ratio=1.5)
    adapter = ResidualAdapter(in_channels=8, ratio=0.0)
    f = torch.randn(3, 8)
    torch.testing.assert_close(adapter((f,))[0], f)


def test_head_width_mismatch_raises():
    from numclip_mm.models.clip_loader import build_open_clip
    with pytest.raises(ValueError, match='width'):
        MODELS.build(dict(type='NumCLIPHead', task='count', in_channels=64),
                     default_args=dict(clip_model=build_open_clip('numclip-tiny')))


# --------------------------------------------------------------------------------------------------------------
# gradients reach exactly the trainable parameters (docs/method.md §3, §4, §10)
# --------------------------------------------------------------------------------------------------------------
def _backward(model, batch):
    x, values = batch
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(x, samples(values), mode='loss')
    assert set(losses) == {'loss_i2t', 'loss_t2i', 'loss_reg'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    return dict(model.named_parameters())


def _check_grads(params, trainable_prefixes):
    trainable = {n for n, p in params.items() if p.requires_grad}
    expected = {n for n in params if n.startswith(trainable_prefixes)}
    assert trainable == expected
    nonzero = 0
    for name, p in params.items():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            nonzero += bool(p.grad.abs().sum() > 0)
        else:
            assert p.grad is None, name
    assert nonzero >= 0.9 * len(trainable), (nonzero, len(trainable))


def test_grads_default_config(batch):
    params = _backward(build(), batch)
    _check_grads(params, ('backbone.', 'neck.', 'head.prompt_learner.concepts', 'head.regressor.'))
    for name in ('head.prompt_learner.concepts', 'head.regressor.fc1.weight', 'head.regressor.fc2.weight',
                 'neck.down.weight', 'neck.up.weight', 'backbone.visual.conv1.weight', 'backbone.visual.proj'):
        assert params[name].grad.abs().sum() > 0, name
    assert params['head.prompt_learner.context'].grad is None
    assert all(p.grad is None for n, p in params.items() if n.startswith('head.text_encoder.'))


def test_grads_learn_context_frozen_backbone(batch):
    model = build(head=dict(prompt_learner=dict(type='ConceptPromptLearner', learn_context=True)),
                  backbone=dict(frozen=True))
    params = _backward(model, batch)
    _check_grads(params, ('neck.', 'head.prompt_learner.context', 'head.prompt_learner.concepts', 'head.regressor.'))
    assert params['head.prompt_learner.context'].grad.abs().sum() > 0
    assert all(p.grad is None for n, p in params.items() if n.startswith('backbone.'))
    assert not model.backbone.visual.training  # a frozen backbone stays in eval mode under model.train()


# --------------------------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------------------------
def _manual_logits(model, x):
    """Doc 2.4/2.5 step by step from the parts: visual -> adapter -> normalise, prompts -> text tower -> normalise."""
    f = model.backbone.visual(x)
    adapter = model.neck
    g = torch.relu(adapter.up(torch.relu(adapter.down(f))))
    v = F.normalize(0.8 * g + 0.2 * f, dim=-1)
    head = model.head
    text = head.text_encoder(head.prompt_learner(), head.prompt_learner.eos_index)
    t_ = F.normalize(text, dim=-1)
    s = head.text_encoder.logit_scale.exp()
    return s * v @ t_.t()


def test_tensor_mode_logits(tiny, batch):
    x, _ = batch
    with torch.no_grad():
        logits = tiny(x, mode='tensor')
        assert logits.shape == (len(x), 5)
        torch.testing.assert_close(logits, _manual_logits(tiny, x), rtol=1e-4, atol=1e-4)
    # random-init CLIP keeps its own temperature: s = exp(log(1/0.07))
    assert tiny.head.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_fixed_logit_scale(batch):
    model = build(head=dict(logit_scale=50.0)).eval()
    x, _ = batch
    assert model.head.logit_scale.item() == 50.0
    with torch.no_grad():
        logits = model(x, mode='tensor')
        clip_scale = model.head.text_encoder.logit_scale.exp()
        torch.testing.assert_close(logits, _manual_logits(model, x) * 50.0 / clip_scale, rtol=1e-4, atol=1e-4)
    assert logits.abs().max() <= 50.0 + 1e-4  # cosine times s


def test_state_dict_round_trip_reproduces_predictions(batch):
    """A model rebuilt from another random init and loaded strictly predicts exactly like the saved one."""
    trained = build(seed=0, head=dict(prompt_learner=dict(type='ConceptPromptLearner', learn_context=True)))
    x, values = batch
    opt = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5)
    trained.train()
    sum(trained(x, samples(values), mode='loss').values()).backward()
    opt.step()
    state = copy.deepcopy(trained.state_dict())
    assert 'head.prompt_learner.prompt.template' in state
    fresh = build(seed=1, head=dict(prompt_learner=dict(type='ConceptPromptLearner', learn_context=True)))
    fresh.load_state_dict(state, strict=True)
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, mode='tensor'), trained(x, mode='tensor'))
        a = torch.stack([d.pred_value for d in fresh(x, mode='predict')])
        b = torch.stack([d.pred_value for d in trained(x, mode='predict')])
    torch.testing.assert_close(a, b)


def test_predict_mode_regressor(tiny, batch):
    x, values = batch
    with torch.no_grad():
        out = tiny(x, samples(values), mode='predict')
        logits = tiny(x, mode='tensor')
        expected_values = tiny.head.regressor(logits)
    assert len(out) == len(x)
    probs = logits.softmax(-1)
    for i, d in enumerate(out):
        assert isinstance(d, DataSample)
        assert d.pred_score.shape == (5,)
        assert d.pred_score.sum().item() == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(d.pred_score, probs[i])
        assert int(d.pred_bin_argmax) == int(probs[i].argmax())
        assert float(d.pred_value) == pytest.approx(float(expected_values[i]), abs=1e-5)
        assert int(d.pred_label) == int(TASK.nearest_bin(float(d.pred_value)))  # the label is the value's bin
        assert float(d.gt_value) == values[i]  # ground truth kept in the same sample


def test_predict_without_data_samples(tiny, batch):
    x, _ = batch
    with torch.no_grad():
        out = tiny(x, mode='predict')
    assert len(out) == len(x) and all('pred_value' in d for d in out)


@pytest.mark.parametrize('prediction', ['expectation', 'argmax'])
def test_predict_expectation_and_argmax(batch, prediction):
    model = build(head=dict(prediction=prediction)).eval()
    x, _ = batch
    with torch.no_grad():
        out = model(x, mode='predict')
        probs = model(x, mode='tensor').softmax(-1)
    anchors = torch.tensor(ANCHORS)
    for i, d in enumerate(out):
        if prediction == 'expectation':
            expected = sum(float(probs[i, k]) * ANCHORS[k] for k in range(5))
        else:
            expected = float(anchors[probs[i].argmax()])
        assert float(d.pred_value) == pytest.approx(expected, abs=1e-4)
    values = torch.stack([torch.as_tensor(d.pred_value) for d in out])
    if prediction == 'expectation':
        torch.testing.assert_close(values, probs @ anchors, rtol=1e-5, atol=1e-5)


def test_prediction_options_validation():
    with pytest.raises(ValueError, match='regressor'):
        build(head=dict(regressor=None))
    with pytest.raises(ValueError, match='prediction'):
        build(head=dict(prediction='median'))
    model = build(head=dict(regressor=None, reg_loss=None, prediction='expectation'))
    assert model.head.regressor is None


def test_loss_needs_gt_value(batch):
    model = build()
    x, values = batch
    plain = [DataSample().set_gt_label(int(TASK.value_to_bin(v))) for v in values]
    with pytest.raises(KeyError, match='gt_value'):
        model(x, plain, mode='loss')


def test_test_step_through_data_preprocessor(tiny, batch):
    x, values = batch
    images = [(xi.clamp(-1, 1) * 100 + 128).to(torch.uint8) for xi in x]
    out = tiny.test_step(dict(inputs=images, data_samples=samples(values)))
    assert len(out) == len(x)
    assert all(d.pred_score.shape == (5,) and 'pred_value' in d for d in out)


def test_ordinal_regression_head_baseline():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='NumCLIP', clip=dict(model_name='numclip-tiny'),
                              backbone=dict(type='OpenCLIPVisionBackbone'), neck=None,
                              head=dict(type='OrdinalRegressionHead', task='count'),
                              data_preprocessor=PREPROCESSOR)).eval()
    assert model.head.fc.in_features == 32
    assert model.head.fc.bias.item() == pytest.approx(4.0)  # starts at the mean anchor
    # crafted features: y = feature 0 exactly; 0.5 -> bin 0, 3.9 -> bin 1, 6.0 -> bin 3 (edge), 12 -> bin 4 (open)
    with torch.no_grad():
        model.head.fc.bias.zero_()
        model.head.fc.weight.zero_()
        model.head.fc.weight[0, 0] = 1.0
        crafted = torch.zeros(5, 32)
        crafted[:, 0] = torch.tensor([0.5, 3.9, 6.0, 12.0, -3.0])
        scores, numbers = model.head.predict_arrays((crafted,))
    torch.testing.assert_close(numbers, crafted[:, 0])
    assert scores.argmax(1).tolist() == [0, 1, 3, 4, 0]  # below the first edge: clamped to bin 0
    assert torch.equal(scores.sum(1), torch.ones(5))
    assert torch.equal(scores.max(1).values, torch.ones(5))  # one-hot
    # the full model: pred_value is the linear output of the image feature, pred_label the bin it falls in
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        feats = model.extract_feat(x)[-1]
        centred = feats - feats.mean(0)
        model.head.fc.weight.copy_(3.0 * centred[0] / centred[0].norm() ** 2)  # sample 0 -> 7, the others spread
        model.head.fc.bias.fill_(4.0 - float(model.head.fc.weight[0] @ feats.mean(0)))
        out = model(x, mode='predict')
        values = model.head(model.extract_feat(x))
    assert values.shape == (6,)
    for d, v in zip(out, values):
        v = float(v)
        assert float(d.pred_value) == pytest.approx(v, abs=1e-5)
        assert int(d.pred_label) == int(TASK.value_to_bin(min(max(v, 0.0), 9.0)))
    assert len({int(d.pred_label) for d in out}) > 1  # the weights spread the numbers over several bins
    losses = model(x, samples([1, 3, 5, 7, 9, 0]), mode='loss')
    assert set(losses) == {'loss_reg'}
    expected = float((values - torch.tensor([1., 3., 5., 7., 9., 0.])).abs().mean())
    assert losses['loss_reg'].item() == pytest.approx(expected, abs=1e-5)


def _linear_regression_model(clamp=True):
    """A regression-head model whose number is feature 0 of the image feature, for crafted features."""
    model = MODELS.build(dict(type='NumCLIP', clip=dict(model_name='numclip-tiny'),
                              backbone=dict(type='OpenCLIPVisionBackbone'), neck=None,
                              head=dict(type='OrdinalRegressionHead', task='count', clamp=clamp),
                              data_preprocessor=PREPROCESSOR)).eval()
    with torch.no_grad():
        model.head.fc.bias.zero_()
        model.head.fc.weight.zero_()
        model.head.fc.weight[0, 0] = 1.0
    return model


@pytest.mark.parametrize('clamp', [True, False])
def test_pred_value_clamped_to_task_range_raw_kept(clamp):
    head = _linear_regression_model(clamp).head
    crafted = torch.zeros(4, 32)
    crafted[:, 0] = torch.tensor([12.0, -3.0, 4.5, 9.0])  # task 'count' covers [0, 9]
    out = head.predict((crafted,))
    raw = [float(d.pred_value_raw) for d in out]
    assert raw == pytest.approx([12.0, -3.0, 4.5, 9.0])
    expected = [9.0, 0.0, 4.5, 9.0] if clamp else raw
    assert [float(d.pred_value) for d in out] == pytest.approx(expected)
    assert head.value_range == (0.0, 9.0)


def test_open_ended_task_clamps_below_only():
    head = MODELS.build(dict(type='OrdinalRegressionHead', in_channels=4,
                             task=dict(name='open', edges=[0, 5], concepts=['low', 'high'], context='x')))
    torch.testing.assert_close(head.to_task_range(torch.tensor([-1.0, 3.0, 1e6])), torch.tensor([0.0, 3.0, 1e6]))


def test_numclip_needs_an_ordinal_head():
    with pytest.raises(TypeError, match='OrdinalHead.*LinearClsHead'):
        MODELS.build(dict(type='NumCLIP', clip=dict(model_name='numclip-tiny'),
                          backbone=dict(type='OpenCLIPVisionBackbone'),
                          head=dict(type='LinearClsHead', num_classes=5)))


def test_ordinal_head_contract_is_abstract():
    from numclip_mm.models.heads import NumCLIPHead, OrdinalHead, OrdinalRegressionHead

    class NoArrays(OrdinalHead):
        def forward(self, feats):
            return feats[-1]

    with pytest.raises(TypeError, match='predict_arrays'):
        NoArrays('count')
    assert issubclass(NumCLIPHead, OrdinalHead) and issubclass(OrdinalRegressionHead, OrdinalHead)
    from mmpretrain.models.heads import ClsHead
    assert issubclass(OrdinalHead, ClsHead)


# --------------------------------------------------------------------------------------------------------------
# text prototype cache
# --------------------------------------------------------------------------------------------------------------
class CallCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_cache_hit_in_eval_mode():
    model = build().eval()
    head = model.head
    counter = CallCounter(head.text_encoder)
    p1 = head.text_prototypes()
    p2 = head.text_prototypes()
    assert p1 is p2
    assert counter.calls == 1
    assert not p1.requires_grad
    torch.testing.assert_close(p1.norm(dim=-1), torch.ones(5))
    # forward passes reuse it too
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32), mode='tensor')
        model(torch.randn(2, 3, 32, 32), mode='predict')
    assert counter.calls == 1
    # even with grad enabled in eval mode
    head.text_prototypes()
    assert counter.calls == 1


def test_cache_miss_after_in_place_concept_change():
    head = build().eval().head
    counter = CallCounter(head.text_encoder)
    p1 = head.text_prototypes()
    p1_copy = p1.clone()
    with torch.no_grad():
        head.prompt_learner.concepts.add_(1)
    p2 = head.text_prototypes()
    assert counter.calls == 2
    assert p2 is not p1
    assert not torch.allclose(p2, p1_copy)
    with torch.no_grad():
        expected = F.normalize(head.text_encoder(head.prompt_learner(), head.prompt_learner.eos_index), dim=-1)
    torch.testing.assert_close(p2, expected)


def test_cache_miss_after_optimizer_step(batch):
    model = build()
    head = model.head
    model.eval()
    p1 = head.text_prototypes().clone()
    x, values = batch
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=10.0)
    loss = sum(model(x, samples(values), mode='loss').values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    counter = CallCounter(head.text_encoder)
    p2 = head.text_prototypes()
    assert counter.calls == 1
    assert not torch.allclose(p1, p2)


def test_cache_miss_after_load_state_dict():
    model = build(seed=0).eval()
    other = build(seed=0)
    with torch.no_grad():
        other.head.prompt_learner.concepts.mul_(-2.0)
    head = model.head
    counter = CallCounter(head.text_encoder)
    p1 = head.text_prototypes().clone()
    model.load_state_dict(other.state_dict())
    p2 = head.text_prototypes()
    assert counter.calls == 2
    assert not torch.allclose(p1, p2)
    other.eval()
    torch.testing.assert_close(p2, other.head.text_prototypes())
    # loading identical values still invalidates (the version counter moved); the result is the same
    model.load_state_dict(copy.deepcopy(other.state_dict()))
    p3 = head.text_prototypes()
    assert counter.calls == 3
    torch.testing.assert_close(p3, p2)


def test_train_mode_with_trainable_prompts_recomputes_with_grad():
    head = build().train().head
    counter = CallCounter(head.text_encoder)
    p1 = head.text_prototypes()
    p2 = head.text_prototypes()
    assert p1.requires_grad and p2.requires_grad
    assert counter.calls == 2
    # under no_grad (e.g. a validation pass that forgot eval()) it may cache, without grad
    with torch.no_grad():
        p3 = head.text_prototypes()
    assert not p3.requires_grad


def test_train_mode_all_text_frozen_is_cached():
    model = build(head=dict(prompt_learner=dict(type='ConceptPromptLearner', learn_context=False,
                                                learn_concepts=False))).train()
    head = model.head
    counter = CallCounter(head.text_encoder)
    p1 = head.text_prototypes()
    p2 = head.text_prototypes()
    assert p1 is p2
    assert counter.calls == 1
    assert not p1.requires_grad
    # a training step does not touch the text side
    x = torch.randn(4, 3, 32, 32)
    losses = model(x, samples([0, 3, 6, 9]), mode='loss')
    sum(losses.values()).backward()
    assert counter.calls == 1
    assert head.prompt_learner.concepts.grad is None


def test_cache_filled_under_inference_mode_does_not_break_training():
    """Prototypes cached during a torch.inference_mode() prediction must not leak an inference tensor into a later
    training step (with a frozen text side the train step reuses the cache)."""
    model = build(head=dict(prompt_learner=dict(type='ConceptPromptLearner', learn_context=False,
                                                learn_concepts=False))).eval()
    with torch.inference_mode():
        model(torch.randn(2, 3, 32, 32), mode='predict')
    model.train()
    losses = model(torch.randn(4, 3, 32, 32), samples([0, 3, 6, 9]), mode='loss')
    sum(losses.values()).backward()  # RuntimeError 'Inference tensors cannot be saved for backward' if it leaks
    assert model.neck.down.weight.grad is not None


# --------------------------------------------------------------------------------------------------------------
# learning works: overfit a tiny ordinal toy set
# --------------------------------------------------------------------------------------------------------------
def test_overfits_toy_set():
    torch.manual_seed(0)
    model = build(seed=0)
    g = torch.Generator().manual_seed(0)
    values = [float(i % 10) for i in range(32)]
    v = torch.tensor(values)
    # brightness proportional to the value, plus fixed noise
    x = (v / 9.0 - 0.5)[:, None, None, None] + 0.3 * torch.randn(32, 3, 32, 32, generator=g)
    data = samples(values)
    assert sorted({int(d.gt_label) for d in data}) == [0, 1, 2, 3, 4]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def mae():
        model.eval()
        with torch.no_grad():
            out = model(x, mode='predict')
        model.train()
        return float((torch.stack([torch.as_tensor(d.pred_value) for d in out]) - v).abs().mean())

    start = time.perf_counter()
    history = []
    for step in range(1, 601):
        model.train()
        loss = sum(model(x, data, mode='loss').values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            history.append((step, mae()))
            if history[-1][1] < 0.1:
                break
    elapsed = time.perf_counter() - start
    final = mae()
    assert final < 0.1, f'MAE {final:.4f} after {history[-1][0]} steps ({elapsed:.1f} s): {history}'
    assert elapsed < 60, f'{elapsed:.1f} s'
    # coarse bins learnt too
    model.eval()
    with torch.no_grad():
        out = model(x, mode='predict')
    acc = np.mean([int(d.pred_bin_argmax) == int(d2.gt_label) for d, d2 in zip(out, data)])
    assert acc >= 0.9


def test_reg_loss_without_regressor_raises():
    """An L1 loss with no regressor would silently train nothing: refuse the config."""
    with pytest.raises(ValueError, match='reg_loss'):
        build(head=dict(regressor=None, prediction='expectation'))


@pytest.mark.parametrize('lam', [0.0, 1.5])
def test_ssr_lambda_outside_unit_interval_raises(lam):
    with pytest.raises(ValueError, match='lam'):
        SSRRegressor(anchors=[0, 1, 2], lam=lam)


def test_training_without_gt_value_when_no_regression_loss(batch):
    """Coarse-only models (CoOp, no-regressor ablation) train from bin labels alone."""
    model = build(head=dict(regressor=None, reg_loss=None, prediction='expectation')).train()
    x, _ = batch
    bare = [DataSample().set_gt_label(c % 5) for c in range(x.shape[0])]
    losses = model(x, [s for s in bare], mode='loss')
    assert set(losses) == {'loss_i2t', 'loss_t2i'}


def test_labels_outside_the_bins_raise(batch):
    model = build().train()
    x, values = batch
    bad = samples(values)
    bad[0].set_gt_label(7)
    with pytest.raises(ValueError, match='same task'):
        model(x, bad, mode='loss')
