// The plugin contract in one include: the interfaces a plugin implements (stage, objective, dataset,
// sampler, analyzer, transform, embedder), how it declares and reads its options, and what the host
// hands it (run context, model, tokenizer). Helpers plugins may use live in moelab/lib/.
#pragma once

#include "moelab/analyzer.h"
#include "moelab/config.h"
#include "moelab/context.h"
#include "moelab/dataset.h"
#include "moelab/embedder.h"
#include "moelab/model.h"
#include "moelab/objective.h"
#include "moelab/options.h"
#include "moelab/plugin.h"
#include "moelab/sampler.h"
#include "moelab/stage.h"
#include "moelab/tokenizer.h"
#include "moelab/transform.h"
