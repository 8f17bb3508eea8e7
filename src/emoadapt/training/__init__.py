"""Training on cached features: settings (:mod:`.settings`), a fold's data (:mod:`.data`), the Lightning pieces
both stages share (:mod:`.trainer`, :mod:`.checkpoint_io`), stage 1 (:mod:`.stage1`), stage 2 (:mod:`.stage2`),
fits in closed form (:mod:`.closed_form`), cross-validation (:mod:`.crossval`), ``evaluate`` (:mod:`.evaluate`),
metrics (:mod:`.metrics`) and reports over runs (:mod:`.reports`). Imported on use: it needs Lightning."""
