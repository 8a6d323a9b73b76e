//! [`CallOptions`]: what every request of a pattern carries (model, system message, temperature,
//! `max_tokens`, seed), set once and shared by every pattern builder through [`WithCallOptions`].

use crate::error::{Error, Result};
use crate::provider::{ChatRequest, DEFAULT_MAX_TOKENS, Message, check_temperature};

/// The options of each request a pattern sends.
///
/// An unset field takes the pattern's default: the provider's model, no system message, the
/// pattern's own temperature (consensus 0.9, refine 0.7, react 0.3, structured 0.0, map-reduce
/// 0.3), `max_tokens` 4096, no seed. Every pattern builder takes them through
/// [`WithCallOptions`], either one at a time or all at once with
/// [`options`](WithCallOptions::options); the `ek` command line builds one from its flags.
///
/// ```
/// use executionkit::prelude::*;
///
/// let opts = CallOptions::new().model("gpt-4o-mini").temperature(0.2).seed(7);
/// let consensus = Consensus::new().options(opts.clone()).samples(3);
/// let refine = RefineLoop::new().options(opts);
/// assert_eq!(consensus.call_options().model.as_deref(), Some("gpt-4o-mini"));
/// assert_eq!(refine.call_options().seed, Some(7));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
#[must_use]
pub struct CallOptions {
    /// The model every request asks for (`None`: the provider's).
    pub model: Option<String>,
    /// A system message before the prompt.
    pub system: Option<String>,
    /// The sampling temperature (`None`: the pattern's default).
    pub temperature: Option<f64>,
    /// `max_tokens` of each request (`None`: 4096).
    pub max_tokens: Option<u32>,
    /// The seed (consensus sends `seed + i` to sample `i`).
    pub seed: Option<u64>,
    /// A routing tag every request carries, for a [`Router`](crate::Router)'s rules (not sent).
    pub tier: Option<String>,
}

impl CallOptions {
    /// No option set: every request takes the pattern's defaults.
    ///
    /// ```
    /// assert_eq!(executionkit::CallOptions::new().model, None);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The model every request asks for (not empty).
    ///
    /// ```
    /// let o = executionkit::CallOptions::new().model("gpt-4o");
    /// assert_eq!(o.model.as_deref(), Some("gpt-4o"));
    /// ```
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// A system message before the prompt.
    ///
    /// ```
    /// let o = executionkit::CallOptions::new().system("Answer in one word.");
    /// assert_eq!(o.system.as_deref(), Some("Answer in one word."));
    /// ```
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// The sampling temperature (finite, ≥ 0).
    ///
    /// ```
    /// assert_eq!(executionkit::CallOptions::new().temperature(0.0).temperature, Some(0.0));
    /// ```
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// `max_tokens` of each request (≥ 1).
    ///
    /// ```
    /// assert_eq!(executionkit::CallOptions::new().max_tokens(256).max_tokens, Some(256));
    /// ```
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// The seed sent with each request.
    ///
    /// ```
    /// assert_eq!(executionkit::CallOptions::new().seed(42).seed, Some(42));
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Tags every request for a [`Router`](crate::Router)'s rules (the tag is not sent).
    ///
    /// ```
    /// assert_eq!(executionkit::CallOptions::new().tier("best").tier.as_deref(), Some("best"));
    /// ```
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Checks every option set; an `invalid_argument` error names the first bad one. The
    /// patterns call it from their own validation, before any request is sent.
    ///
    /// ```
    /// use executionkit::CallOptions;
    /// assert!(CallOptions::new().temperature(0.5).validate().is_ok());
    /// let e = CallOptions::new().max_tokens(0).validate().unwrap_err();
    /// assert_eq!(e.metadata()["argument"], "max_tokens");
    /// assert!(CallOptions::new().model(" ").validate().unwrap_err().is_invalid_argument());
    /// ```
    ///
    /// # Errors
    /// `invalid_argument` for a temperature that is negative or not finite, `max_tokens` 0, or
    /// an empty model name.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.temperature {
            check_temperature(t)?;
        }
        if let Some(n) = self.max_tokens {
            super::check_max_tokens(n)?;
        }
        if matches!(&self.model, Some(m) if m.trim().is_empty()) {
            return Err(Error::invalid_argument(
                "model",
                "model must not be empty, got ''",
            ));
        }
        Ok(())
    }

    /// The temperature to send: the one set, else `default`.
    pub(crate) fn temperature_or(&self, default: f64) -> f64 {
        self.temperature.unwrap_or(default)
    }

    /// The `max_tokens` to send: the one set, else 4096.
    pub(crate) fn max_tokens_or_default(&self) -> u32 {
        self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// The system message (if any) followed by `user`.
    pub(crate) fn messages(&self, user: impl Into<String>) -> Vec<Message> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = &self.system {
            messages.push(Message::system(s.clone()));
        }
        messages.push(Message::user(user));
        messages
    }

    /// A request for `messages` with these options, `default_temperature` where none is set.
    pub(crate) fn request(&self, messages: Vec<Message>, default_temperature: f64) -> ChatRequest {
        let mut req = ChatRequest::new(messages)
            .temperature(self.temperature_or(default_temperature))
            .max_tokens(self.max_tokens_or_default());
        if let Some(seed) = self.seed {
            req = req.seed(seed);
        }
        if let Some(m) = &self.model {
            req = req.model(m.clone());
        }
        req.tier.clone_from(&self.tier);
        req
    }
}

/// The [`CallOptions`] setters of every pattern builder, written once.
///
/// `Consensus`, `RefineLoop`, `ReactLoop`, `Structured`, `StructuredValue` and `MapReduce`
/// implement it; bring it into scope with `use executionkit::prelude::*`.
///
/// ```
/// use executionkit::prelude::*;
/// # futures::executor::block_on(async {
/// let p = MockProvider::new(["4"]);
/// let r = Consensus::new()
///     .samples(1)
///     .model("small")
///     .system("Answer with a number.")
///     .temperature(0.0)
///     .max_tokens(8)
///     .seed(1)
///     .run(&p, "2 + 2?", &RunContext::new())
///     .await
///     .unwrap();
/// assert_eq!(r.value, "4");
/// let sent = p.last_call().unwrap().request;
/// assert_eq!(sent.model.as_deref(), Some("small"));
/// assert_eq!((sent.temperature, sent.max_tokens, sent.seed), (Some(0.0), Some(8), Some(1)));
/// # });
/// ```
pub trait WithCallOptions: Sized {
    /// The options as they are now.
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(RefineLoop::new().call_options(), &CallOptions::new());
    /// ```
    fn call_options(&self) -> &CallOptions;

    /// The options, to change in place.
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// let mut c = Consensus::new();
    /// c.call_options_mut().seed = Some(3);
    /// assert_eq!(c.call_options().seed, Some(3));
    /// ```
    fn call_options_mut(&mut self) -> &mut CallOptions;

    /// Replaces all the call options at once.
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// let c = Consensus::new().seed(1).options(CallOptions::new().model("m"));
    /// assert_eq!((c.call_options().seed, c.call_options().model.as_deref()), (None, Some("m")));
    /// ```
    #[must_use]
    fn options(mut self, options: CallOptions) -> Self {
        *self.call_options_mut() = options;
        self
    }

    /// The model every request asks for (default: the provider's).
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(MapReduce::new().model("m").call_options().model.as_deref(), Some("m"));
    /// ```
    #[must_use]
    fn model(mut self, model: impl Into<String>) -> Self {
        self.call_options_mut().model = Some(model.into());
        self
    }

    /// A system message before the prompt.
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// let c = Consensus::new().system("Be brief.");
    /// assert_eq!(c.call_options().system.as_deref(), Some("Be brief."));
    /// ```
    #[must_use]
    fn system(mut self, system: impl Into<String>) -> Self {
        self.call_options_mut().system = Some(system.into());
        self
    }

    /// The sampling temperature (finite, ≥ 0; checked before any call).
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(RefineLoop::new().temperature(0.2).call_options().temperature, Some(0.2));
    /// ```
    #[must_use]
    fn temperature(mut self, t: f64) -> Self {
        self.call_options_mut().temperature = Some(t);
        self
    }

    /// `max_tokens` of each request (≥ 1; checked before any call).
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(Consensus::new().max_tokens(64).call_options().max_tokens, Some(64));
    /// ```
    #[must_use]
    fn max_tokens(mut self, n: u32) -> Self {
        self.call_options_mut().max_tokens = Some(n);
        self
    }

    /// A routing tag every request carries, for a [`Router`](crate::Router)'s rules (not
    /// sent to the server).
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(Consensus::new().tier("best").call_options().tier.as_deref(), Some("best"));
    /// ```
    #[must_use]
    fn tier(mut self, tier: impl Into<String>) -> Self {
        self.call_options_mut().tier = Some(tier.into());
        self
    }

    /// The seed of each request (consensus sends `seed + i` as the seed of sample `i`).
    ///
    /// ```
    /// use executionkit::prelude::*;
    /// assert_eq!(Consensus::new().seed(42).call_options().seed, Some(42));
    /// ```
    #[must_use]
    fn seed(mut self, seed: u64) -> Self {
        self.call_options_mut().seed = Some(seed);
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_applies_the_defaults_and_the_options_set() {
        let plain = CallOptions::new().request(CallOptions::new().messages("q"), 0.9);
        assert_eq!(plain.temperature, Some(0.9));
        assert_eq!(plain.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!((plain.seed, plain.model.as_deref()), (None, None));
        assert_eq!(plain.messages.len(), 1);

        let o = CallOptions::new()
            .system("s")
            .temperature(0.1)
            .max_tokens(9)
            .seed(3)
            .model("m");
        let req = o.request(o.messages("q"), 0.9);
        assert_eq!(req.temperature, Some(0.1));
        assert_eq!(req.max_tokens, Some(9));
        assert_eq!((req.seed, req.model.as_deref()), (Some(3), Some("m")));
        assert_eq!(req.messages.len(), 2);
    }

    #[test]
    fn validate_names_the_bad_option() {
        for (o, arg) in [
            (CallOptions::new().temperature(f64::NAN), "temperature"),
            (CallOptions::new().temperature(-1.0), "temperature"),
            (CallOptions::new().max_tokens(0), "max_tokens"),
            (CallOptions::new().model(""), "model"),
        ] {
            assert_eq!(
                o.validate().unwrap_err().metadata()["argument"],
                arg,
                "{o:?}"
            );
        }
        assert!(CallOptions::new().validate().is_ok());
    }
}
